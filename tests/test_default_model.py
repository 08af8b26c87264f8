"""The model shipped in the repo loads the way users load it and speaks a sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import llamavoice
from llamavoice.audio import is_silent

DEFAULT_DIR = Path(llamavoice.__file__).parent / "checkpoints" / "default"
SENTENCE = "Hello there, how are you today?"


def test_shipped_model_is_small_enough():
    total = sum(p.stat().st_size for p in DEFAULT_DIR.rglob("*") if p.is_file())
    assert (DEFAULT_DIR / "model.safetensors").is_file()
    assert total <= 60 * 1024 * 1024, f"default model is {total / 2**20:.1f} MiB, over the 60 MB budget"


def test_shipped_model_speaks_a_sentence():
    tts = llamavoice.load(device="cpu")  # no model dir: the shipped default
    assert "default" in tts.list_voices() and len(tts.list_voices()) >= 3
    audio, sr = tts.synthesize(SENTENCE, seed=0)
    seconds = len(audio) / sr
    # Speech length for 31 characters: not a click, not the max-length cap of a model that never stops.
    assert 0.8 <= seconds <= 12.0, seconds
    assert np.isfinite(audio).all()
    assert not is_silent(audio)
    again, _ = tts.synthesize(SENTENCE, seed=0)
    assert np.array_equal(audio, again)


def _voice_corpus(folder: Path) -> Path:
    """Two training speakers with clips of 3-8 s (the limits of the shipped voices' clips)."""
    from conftest import write_clip

    from llamavoice.data.manifest import ManifestEntry, write_manifest

    entries = []
    (folder / "wavs").mkdir(parents=True)
    # spk1 has a second clip in the limits, spk0 a second one beyond them (10 s).
    for name, speaker, seconds in (("spk0", "spk0", 4.0), ("spk1", "spk1", 5.0), ("spk1b", "spk1", 6.5),
                                   ("spk0_long", "spk0", 10.0)):
        path = write_clip(folder / "wavs" / f"{name}.wav", seconds, seed=30 + len(entries))
        entries.append(ManifestEntry(str(path), "A clip to clone.", speaker, seconds, 24000))
    write_manifest(folder / "manifest_train.jsonl", entries)
    return folder


def test_pick_clips_orders_by_distance_to_target_within_limits(tmp_path):
    from recipes.default_model.kit import VOICE_CLIP_LIMITS, pick_clip, pick_clips

    manifest = _voice_corpus(tmp_path / "corpus") / "manifest_train.jsonl"
    assert [Path(c["audio"]).name for c in pick_clips(manifest, "spk1", 5, **VOICE_CLIP_LIMITS)] == [
        "spk1.wav", "spk1b.wav"]
    assert [Path(c["audio"]).name for c in pick_clips(manifest, "spk1", 5, target=7.0, lo=3.0, hi=8.0)] == [
        "spk1b.wav", "spk1.wav"]
    assert [c["duration"] for c in pick_clips(manifest, "spk0", 5, **VOICE_CLIP_LIMITS)] == [4.0]  # 10 s is out
    assert pick_clip(manifest, "spk0", target=9.0, lo=9.0, hi=12.0)["duration"] == 10.0
    assert pick_clip(manifest, "nobody", **VOICE_CLIP_LIMITS) is None


def test_pick_voice_ranks_speakers_and_sets_the_default(trained_model_dir, tmp_path, capsys):
    import json
    import shutil

    from recipes.default_model import pick_voice

    model = Path(shutil.copytree(trained_model_dir, tmp_path / "model"))
    corpus = _voice_corpus(tmp_path / "corpus")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("# a comment line\nGood morning.\n\nSee you tomorrow at noon.\n")
    out = tmp_path / "ranking.json"
    assert pick_voice.main([str(model), "--corpus", str(corpus), "--sentences", str(sentences),
                            "--seeds", "0", "1", "--mos", "--out", str(out),
                            "--sampling", '{"temperature": 0.5}', "--sampling", '{"temperature": 0.9}']) == 0
    table = capsys.readouterr().out
    assert '| spk0 | spk0.wav | {"temperature": 0.5} |' in table and "| spk1 | spk1.wav |" in table
    report = json.loads(out.read_text())
    scores = report["scores"]
    assert [s["wer"] for s in scores] == sorted(s["wer"] for s in scores)  # fewest errors first
    assert sorted((s["speaker"], s["sampling"]["temperature"]) for s in scores) == [
        ("spk0", 0.5), ("spk0", 0.9), ("spk1", 0.5), ("spk1", 0.9)]
    for s in scores:
        assert s["words"] == 2 * (2 + 5)  # two seeds x the words of both sentences (comments skipped)
        assert s["wer"] == pytest.approx(100 * s["errors"] / s["words"])
        assert len(s["mos"]) == 4 and 1.0 <= s["mean_mos"] <= 5.0  # DistillMOS of every sentence x seed
    assert "DistillMOS |" in table.splitlines()[0]
    assert len(report["items"]) == 2 * 2 * 2 * 2  # speakers x samplings x seeds x sentences
    # --clips 2: spk1 is scored once per clip in the limits, spk0 has only one there.
    assert pick_voice.main([str(model), "--corpus", str(corpus), "--sentences", str(sentences), "--clips", "2",
                            "--out", str(out)]) == 0
    assert sorted((s["speaker"], s["clip"]) for s in json.loads(out.read_text())["scores"]) == [
        ("spk0", "spk0.wav"), ("spk1", "spk1.wav"), ("spk1", "spk1b.wav")]
    capsys.readouterr()
    # A bad --sampling is refused before any model loads.
    assert pick_voice.main([str(model), "--corpus", str(corpus), "--sampling", '{"temprature": 0.2}']) == 2
    assert "temprature" in capsys.readouterr().err

    assert pick_voice.main([str(model), "--corpus", str(corpus), "--set-default", "spk1"]) == 0
    voices = model / "voices"
    assert (voices / "default.safetensors").read_bytes() == (voices / "spk1.safetensors").read_bytes()
    voices_report = json.loads((voices / "voices.json").read_text())
    assert {"voice": "default", "same_as": "spk1"} in voices_report
    # The shipped voices' speakers are not in this corpus: each skip names the clip limits used.
    assert {r["skipped"].split(" in ")[0] for r in voices_report if "skipped" in r} == {"no clip of 3-8 s"}
    assert llamavoice.load(model).get_voice("default").latents.shape[0] > 0

    assert pick_voice.main([str(model), "--corpus", str(corpus), "--set-default", "nobody"]) == 2
    assert "'nobody'" in capsys.readouterr().err


def test_teacher_ceiling_renders_each_heldout_sentence_once(tmp_path):
    """The default voice's ceiling: its teacher engine (here hibari, installed with the dev extra) reads the
    distinct held-out sentences into an eval list the harness loads."""
    import json

    import soundfile as sf

    from llamavoice.errors import ConfigError
    from llamavoice.eval.lists import load_eval_list
    from recipes.default_model.teacher_ceiling import heldout_texts, main, render_eval_list

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"audio": f"wavs/x{n}.wav", "text": text, "speaker": spk}
            for n, (text, spk) in enumerate([("The cat sat down.", "a"), ("A dog ran home.", "a"),
                                             ("The cat sat down.", "b")])]
    (corpus / "manifest_heldout_sentences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = heldout_texts(corpus)
    assert texts == ["The cat sat down.", "A dog ran home."]

    items = load_eval_list(render_eval_list(texts, "hibari", tmp_path / "out"))
    assert [it.text for it in items] == texts
    for it in items:
        audio, sr = sf.read(it.reference)
        assert sr == 24000 and 0.5 < len(audio) / sr < 5.0 and it.prompt == it.reference

    with pytest.raises(ConfigError, match="unknown corpus voice"):
        render_eval_list(texts, "nobody", tmp_path / "out2")
    assert main(["--corpus", str(tmp_path / "missing"), "--speaker", "hibari", "--out", str(tmp_path / "o3")]) == 2


def test_error_sources_scores_reference_vae_and_lm_on_the_same_items(trained_model_dir, tmp_path, capsys):
    """Two held-out sentences spoken by hibari (each the other's prompt): the recording is heard right, the tiny
    model's own speech is not, and every source is scored on the same words."""
    import soundfile as sf

    from llamavoice.data.manifest import ManifestEntry, write_manifest
    from recipes.data.voices import catalogue_by_name, synthesize
    from recipes.default_model.error_sources import SOURCES, main

    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    texts = ["The weather is lovely today, so we will walk to the market after lunch.",
             "Please close the door behind you when you leave the office this evening."]
    entries = []
    for n, text in enumerate(texts):
        audio = synthesize(catalogue_by_name()["hibari"], text, seed=n)
        path = corpus / "wavs" / f"h{n}.wav"
        sf.write(path, audio, 24000)
        entries.append(ManifestEntry(str(path), text, "hibari", len(audio) / 24000, 24000))
    write_manifest(corpus / "manifest_heldout_sentences.jsonl", entries)

    assert main([str(trained_model_dir), "--corpus", str(corpus)]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table}
    assert list(rows) == list(SOURCES)
    wer = {source: float(cells[0]) for source, cells in rows.items()}
    assert wer["reference"] <= 20.0  # hibari reads these plainly
    assert wer["lm free-running"] >= 50.0 > wer["reference"]  # a model trained a few steps babbles

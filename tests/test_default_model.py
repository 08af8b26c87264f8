"""The model shipped in the repo loads the way users load it and speaks a sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

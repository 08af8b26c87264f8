"""Shared fixtures: a real tiny model with a real trained tokenizer, and real audio batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llamavoice.config import preset
from llamavoice.models.llamavoice import Batch, LlamaVoice
from llamavoice.text.tokenizer import TextTokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "How much wood would a woodchuck chuck?",
    "She sells sea shells by the sea shore!",
    "Doctor Smith paid three dollars and fifty cents.",
    "In nineteen ninety-nine the forty-second edition appeared.",
    "Peter Piper picked a peck of pickled peppers.",
    "A journey of a thousand miles begins with a single step.",
    "Is this the real life, or is it just fantasy?",
]


@pytest.fixture(scope="session")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(SENTENCES * 4, vocab_size=300)


def make_model(tokenizer: TextTokenizer, seed: int = 0, **lm_overrides) -> LlamaVoice:
    torch.manual_seed(seed)
    cfg = preset("tiny")
    for key, value in lm_overrides.items():
        setattr(cfg.lm, key, value)
    return LlamaVoice(cfg, tokenizer)


@pytest.fixture()
def tiny_model(tokenizer: TextTokenizer) -> LlamaVoice:
    return make_model(tokenizer)


def synth_audio(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A voiced-speech-like signal: a few harmonics with a wobbling pitch plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(90, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t) ** 2)
    return (0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_batch(model: LlamaVoice, seconds: list[float], seed: int = 0) -> Batch:
    sr = model.sample_rate
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(len(seconds))]
    ids = [model.tokenizer.encode(t) for t in texts]
    audio = [synth_audio(s, sr, seed + i) for i, s in enumerate(seconds)]
    prompts = [synth_audio(s * 0.7 + 0.3, sr, seed + 100 + i) for i, s in enumerate(seconds)]

    def pad(arrays, dtype):
        out = torch.zeros(len(arrays), max(len(a) for a in arrays), dtype=dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = torch.as_tensor(np.asarray(a), dtype=dtype)
        return out, torch.tensor([len(a) for a in arrays])

    text, text_lengths = pad(ids, torch.long)
    wav, wav_lengths = pad(audio, torch.float32)
    prompt, prompt_lengths = pad(prompts, torch.float32)
    return Batch(text, text_lengths, wav, wav_lengths, prompt, prompt_lengths)

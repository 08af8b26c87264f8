"""The LM's learned text alignment checked against Piper's own phoneme durations (issue 10).

Piper (VITS) decides how many samples each phoneme lasts, and with ``alignments`` it says so
(:class:`~llamavoice.eval.systems.PiperSystem`): a sentence it renders comes with known word
onsets. Run teacher-forced on that audio, the LM's alignment block attends over the text at every
step (:func:`learned_alignment`); the first frame that reads a word's first token is the word's
onset in the model's view (:func:`onsets_from_attention`). Piper's espeak phonemes and our gruut
phonemes differ, so the two are compared word by word only, on sentences where both see the same
number of words. Piper checks the alignment; it plays no part in training.

The reference to beat is a uniform pace (:func:`uniform_onsets`): words spread over the utterance in
proportion to their text tokens, which is what a perfectly diagonal attention reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavoice.errors import ConfigError
from llamavoice.eval.metrics import EvalDependencyError
from llamavoice.text.phonemes import PUNCTUATION, WORD_BOUNDARY

SPACE = " "  # Piper's espeak phoneme between words


def word_starts(symbols: Sequence[str]) -> list[int]:
    """The index of each word's first token in a phoneme-token sequence (``WORD_BOUNDARY`` separates
    words; punctuation belongs to the word before it)."""
    starts, new_word = [], True
    for i, symbol in enumerate(symbols):
        if symbol == WORD_BOUNDARY:
            new_word = True
        elif new_word and symbol not in PUNCTUATION.values():
            starts.append(i)
            new_word = False
    return starts


@torch.no_grad()
def learned_alignment(model: Any, audio: np.ndarray, ids: Sequence[int], prompt: Tensor) -> Tensor:
    """The LM's learned alignment for one utterance: (latent frames, text tokens), each row the
    alignment attention averaged over its heads (rows sum to 1).

    ``model``: a :class:`~llamavoice.models.llamavoice.LlamaVoice` with an alignment block; ``audio``:
    the utterance at the model's rate; ``ids``: its text tokens; ``prompt``: the voice, flow-space
    latents u (T, D) such as ``Voice.latents``. The LM reads the posterior mean of the audio through
    the flow, teacher-forced, without the alignment prior (as at inference). Each LM step predicts
    r frames; its attention row stands for all of them."""
    if model.lm.alignment is None:
        raise ConfigError("this model has no alignment block (lm.align_layer = 0): nothing to check")
    device = model.device
    mu, _ = model.vae.encode(torch.from_numpy(np.ascontiguousarray(audio, np.float32))[None].to(device))
    frames = int(model.vae.num_frames(torch.tensor([len(audio)])))
    u, _ = model.flow(mu[0, :frames])
    prompt = prompt.to(device=device, dtype=u.dtype)
    one = lambda n: torch.tensor([n], device=device)  # noqa: E731
    out = model.lm(torch.tensor([list(ids)], device=device), one(len(ids)), prompt[None], one(prompt.shape[0]),
                   u[None], one(frames), prior_weight=0.0)
    per_step = out.alignment[0].mean(dim=0)[:-1]  # the last output position only decides "stop"
    return per_step.repeat_interleave(model.lm.r, dim=0)[:frames].cpu()


def onsets_from_attention(attention: Tensor | np.ndarray, starts: Sequence[int], frame_rate: float,
                          position: str = "expected") -> list[float]:
    """Word onsets in seconds from an alignment (frames, tokens): each frame reads a text position,
    the attention-weighted mean (``expected``) or the most attended token (``argmax``); a word
    begins at the first frame whose position is within half a token of the word's first token
    (or at the end, if none reaches it)."""
    attn = torch.as_tensor(attention, dtype=torch.float64)
    if position == "expected":
        read = attn @ torch.arange(attn.shape[1], dtype=torch.float64)
    elif position == "argmax":
        read = attn.argmax(dim=1).double()
    else:
        raise ConfigError(f"position must be 'expected' or 'argmax', got {position!r}")
    reached = read[:, None] >= torch.tensor(starts, dtype=torch.float64)[None] - 0.5  # (frames, words)
    first = torch.where(reached.any(dim=0), reached.double().argmax(dim=0), attn.shape[0])
    return [float(f) / frame_rate for f in first]


def uniform_onsets(starts: Sequence[int], num_tokens: int, duration: float) -> list[float]:
    """The uniform-pace reference: every text token lasts the same, so word w begins at
    ``duration * starts[w] / num_tokens``."""
    return [duration * s / num_tokens for s in starts]


@dataclass
class PiperRendering:
    """A sentence spoken by Piper, with its durations: ``phoneme_samples`` per espeak phoneme
    (sentence start and end marks included, each with the pause after it), ``words`` the phonemes of
    each word, ``onsets`` (s) when each word's first phoneme begins."""

    audio: np.ndarray
    sample_rate: int
    phoneme_samples: list[int]
    words: list[str]
    onsets: list[float]


def render_with_piper(piper: Any, text: str) -> PiperRendering:
    """Speak ``text`` with a :class:`~llamavoice.eval.systems.PiperSystem` made with ``alignments=True``;
    its sentences are joined as Piper streams them."""
    audio, samples, words, onsets, rate = [], [], [], [], 0
    offset = 0
    for chunk in piper.chunks(text):
        if chunk.phoneme_alignments is None:
            raise EvalDependencyError("Piper reported no phoneme alignments: make the PiperSystem with "
                                      "alignments=True (needs piper-tts >= 1.8 and onnx: "
                                      "pip install 'piper-tts[alignment]')")
        rate = chunk.sample_rate
        new_word = True
        for aligned in chunk.phoneme_alignments:
            if aligned.phoneme == SPACE:
                new_word = True
            elif aligned.phoneme.isalpha():  # a sound or its stress, not "^", "$" or punctuation
                if new_word:
                    words.append("")
                    onsets.append(offset / rate)
                    new_word = False
                words[-1] += aligned.phoneme
            samples.append(int(aligned.num_samples))
            offset += int(aligned.num_samples)
        audio.append(np.asarray(chunk.audio_float_array, np.float32))
    return PiperRendering(np.concatenate(audio) if audio else np.zeros(0, np.float32), rate, samples, words, onsets)


def word_errors(predicted: Sequence[float], reference: Sequence[float]) -> list[float]:
    """predicted - reference onset per word, in seconds (> 0: late), leaving out the first word: both
    sides put it at the start by construction, so it would only flatter every method."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predicted onsets for {len(reference)} words")
    return [p - r for p, r in zip(predicted[1:], reference[1:], strict=True)]


def onset_figures(errors: Sequence[float]) -> dict[str, float]:
    """From signed onset errors (s): mean absolute error and mean error (bias, > 0: late) in ms, and
    the share of words within 50 and 100 ms."""
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        nan = float("nan")
        return {"words": 0, "mae_ms": nan, "bias_ms": nan, "within_50ms": nan, "within_100ms": nan}
    return {"words": int(e.size), "mae_ms": float(np.abs(e).mean() * 1000), "bias_ms": float(e.mean() * 1000),
            "within_50ms": float((np.abs(e) <= 0.05).mean()), "within_100ms": float((np.abs(e) <= 0.1).mean())}

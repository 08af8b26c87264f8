"""The training dataset: text ids, target audio and a voice prompt from another utterance.

The prompt comes from a *different* utterance of the same speaker (cross-utterance prompting,
see DESIGN.md), so the model learns to clone a voice from audio whose words it never has to
speak. Speakers with a single utterance cannot provide that and are left out.

Randomness (which prompt utterance, where to crop it) is a function of ``(seed, epoch, index)``
only: an item is reproducible whatever the worker, batch or order it is loaded in. Call
:meth:`TTSDataset.set_epoch` before each epoch (before the DataLoader iterator is created; with
``persistent_workers=True`` the workers keep the epoch they were started with).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from llamavoice.audio import load_audio
from llamavoice.data.manifest import DatasetError, ManifestEntry
from llamavoice.errors import TextError
from llamavoice.models.llamavoice import Batch

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class TTSDataset(torch.utils.data.Dataset):
    """Items are dicts with ``text`` (LongTensor ids), ``audio`` and ``prompt_audio`` (float32
    mono at ``sample_rate``), plus ``index``, ``prompt_index`` and ``speaker`` for bookkeeping.

    ``entries`` after construction holds only the usable utterances; indices refer to it.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        tokenizer: Tokenizer,
        sample_rate: int,
        max_prompt_seconds: float = 6.0,
        min_prompt_seconds: float = 1.0,
        seed: int = 0,
    ):
        if not 0 < min_prompt_seconds <= max_prompt_seconds:
            raise DatasetError(
                f"need 0 < min_prompt_seconds <= max_prompt_seconds, got {min_prompt_seconds} and {max_prompt_seconds}"
            )
        by_speaker: dict[str, list[int]] = defaultdict(list)
        for i, entry in enumerate(entries):
            by_speaker[entry.speaker].append(i)
        singles = [s for s, idx in by_speaker.items() if len(idx) < 2]
        self.num_excluded = len(singles)
        if singles:
            log.warning(
                "%d speaker(s) with a single utterance left out (a prompt must come from another "
                "utterance of the same speaker), e.g. %s", len(singles), ", ".join(sorted(singles)[:5]),
            )
        keep = sorted(i for s, idx in by_speaker.items() if len(idx) >= 2 for i in idx)
        if not keep:
            raise DatasetError(
                f"no usable utterances among {len(entries)}: every speaker needs at least two utterances "
                "(one to speak, another as the voice prompt)"
            )
        self.entries: list[ManifestEntry] = [entries[i] for i in keep]
        self.tokenizer = tokenizer
        self.sample_rate = int(sample_rate)
        self.max_prompt_seconds = float(max_prompt_seconds)
        self.min_prompt_seconds = float(min_prompt_seconds)
        self.seed = int(seed)
        self.epoch = 0

        groups: dict[str, list[int]] = defaultdict(list)
        for i, entry in enumerate(self.entries):
            groups[entry.speaker].append(i)
        # Prompt candidates of an item: its speaker's other utterances, preferring those long enough
        # to give a min_prompt_seconds prompt. Kept once per speaker, not per item: per-item lists grow
        # with the square of a speaker's clip count (20 k clips of one voice: 3 GB).
        self._speaker_clips: dict[str, np.ndarray] = {}
        self._speaker_long_clips: dict[str, np.ndarray] = {}
        for speaker, idx in groups.items():
            self._speaker_clips[speaker] = np.asarray(idx, dtype=np.int64)
            self._speaker_long_clips[speaker] = np.asarray(
                [j for j in idx if self.entries[j].duration >= self.min_prompt_seconds], dtype=np.int64)
        self.speakers = sorted(groups)

    @property
    def durations(self) -> list[float]:
        """Target durations in seconds, aligned with indices (for :class:`DurationBatchSampler`)."""
        return [e.duration for e in self.entries]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def prompt_choice(self, index: int) -> tuple[int, float]:
        """(prompt utterance index, crop start in seconds) for ``index`` at the current epoch."""
        rng = self._rng(index)
        speaker = self.entries[index].speaker
        cands = self._speaker_long_clips[speaker]
        if len(cands) == int(_find(cands, index)[1]):  # no other clip is long enough: any other one
            cands = self._speaker_clips[speaker]
        # Draw among the candidates other than the item itself, stepping over its own position.
        own, is_candidate = _find(cands, index)
        k = int(rng.integers(len(cands) - is_candidate))
        j = int(cands[k + 1 if is_candidate and k >= own else k])
        slack = max(0.0, self.entries[j].duration - self.max_prompt_seconds)
        return j, float(rng.uniform(0.0, slack)) if slack > 0 else 0.0

    def _load(self, entry: ManifestEntry) -> np.ndarray:
        audio, _ = load_audio(entry.audio, self.sample_rate)
        return audio

    def text_ids(self, index: int) -> list[int]:
        """The token ids of item ``index``'s transcript, refusing one that encodes to nothing."""
        entry = self.entries[index]
        try:
            ids = self.tokenizer.encode(entry.text)
        except TextError as exc:
            raise TextError(f"the transcript of {entry.audio} cannot be used: {exc}") from exc
        if len(ids) == 0:
            raise TextError(f"the text of {entry.audio} encodes to no tokens: {entry.text!r}; fix or drop it")
        return ids

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.entries)} utterances")
        entry = self.entries[index]
        ids = self.text_ids(index)
        audio = self._load(entry)

        j, start_s = self.prompt_choice(index)
        prompt = self._load(self.entries[j])
        start = min(int(round(start_s * self.sample_rate)), max(0, len(prompt) - 1))
        prompt = prompt[start : start + int(round(self.max_prompt_seconds * self.sample_rate))]
        return {
            "text": torch.tensor(ids, dtype=torch.long),
            "audio": torch.from_numpy(audio),
            "prompt_audio": torch.from_numpy(np.ascontiguousarray(prompt)),
            "index": index,
            "prompt_index": j,
            "speaker": entry.speaker,
        }


def _find(sorted_ids: np.ndarray, index: int) -> tuple[int, bool]:
    """(where ``index`` is or would go in the ascending array ``sorted_ids``, whether it is there)."""
    at = int(np.searchsorted(sorted_ids, index))
    return at, bool(at < len(sorted_ids) and sorted_ids[at] == index)


def pad_sequences(seqs: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad tensors of shape (T, ...) along T with zeros: (B, T_max, ...) and the lengths (B,)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.zeros(len(seqs), int(lengths.max()), *seqs[0].shape[1:], dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def pad_fields(items: list[dict[str, Any]], *keys: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each key, the items' tensors right-padded with zeros and their lengths (token ids,
    ``text``, as int64; everything else as float32)."""
    if not items:
        raise DatasetError("cannot collate an empty batch")
    return [pad_sequences([it[k] for it in items], torch.long if k == "text" else torch.float32) for k in keys]


def collate(items: list[dict[str, Any]]) -> Batch:
    """Right-pad a list of :class:`TTSDataset` items into a :class:`Batch` (zeros as padding)."""
    (text, text_lengths), (audio, audio_lengths), (prompt, prompt_lengths) = pad_fields(
        items, "text", "audio", "prompt_audio")
    return Batch(text, text_lengths, audio, audio_lengths, prompt, prompt_lengths)

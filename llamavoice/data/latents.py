"""Stage ``lm`` on cached VAE posteriors: encode every utterance once, then train on latents.

The VAE is frozen in stage ``lm``, so re-encoding the audio at every step (and reading and
resampling WAVs) is wasted CPU. :func:`fill_latent_cache` encodes each utterance once into a
:class:`~llamavoice.data.cache.LatentCache` keyed by the encoder's weights; the
:class:`LatentTTSDataset` then yields posteriors (μ, log σ) instead of audio, and the prompt is a
crop of another utterance's posterior, chosen exactly as :class:`TTSDataset` chooses it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from llamavoice.audio import load_audio
from llamavoice.data.cache import LatentCache, weights_fingerprint
from llamavoice.data.dataset import Tokenizer, TTSDataset, pad_fields
from llamavoice.data.manifest import DatasetError, ManifestEntry
from llamavoice.models.llamavoice import Posteriors

log = logging.getLogger(__name__)


def vae_cache_key(model: Any) -> str:
    """The cache key of a LlamaVoice's encoder: its weights plus the audio/VAE config."""
    return weights_fingerprint(model.vae.encoder, {"audio": model.config.audio, "vae": model.config.vae})


@torch.no_grad()
def fill_latent_cache(model: Any, entries: Sequence[ManifestEntry], cache: LatentCache,
                      progress: bool = True) -> int:
    """Encode every entry not yet in ``cache`` with ``model.vae`` (one utterance at a time, so no
    padding reaches the encoder). Returns how many were encoded."""
    todo = [e for e in entries if e.audio not in cache]
    if not todo:
        return 0
    was_training = model.vae.training
    model.vae.eval()
    device = next(model.vae.parameters()).device
    for entry in tqdm(todo, desc="encoding latents", disable=not progress, mininterval=10):
        audio, _ = load_audio(entry.audio, model.sample_rate)
        mu, logstd = model.vae.encode(torch.from_numpy(audio)[None].to(device))
        frames = int(model.vae.num_frames(torch.tensor([len(audio)])))
        cache.put(entry.audio, mu[0, :frames], logstd[0, :frames])
    model.vae.train(was_training)
    return len(todo)


class LatentTTSDataset(TTSDataset):
    """:class:`TTSDataset` over cached posteriors. Every entry must be in the cache."""

    def __init__(self, entries: Sequence[ManifestEntry], tokenizer: Tokenizer, cache: LatentCache,
                 latent_rate: float, **kwargs: Any):
        super().__init__(entries, tokenizer, sample_rate=1, **kwargs)
        self.cache = cache
        self.latent_rate = float(latent_rate)
        missing = [e.audio for e in self.entries if e.audio not in cache]
        if missing:
            raise DatasetError(f"{len(missing)} utterance(s) are not in the latent cache {cache.directory}, "
                               f"e.g. {missing[0]}; fill it first (fill_latent_cache)")
        # Token ids once: phonemizing every item at every epoch would cost more than the LM step.
        self._ids = self._cached_text_ids()

    def _cached_text_ids(self) -> list[list[int]]:
        """Every transcript's ids, kept beside the posteriors: phonemizing a 13 k-sentence corpus takes
        minutes, which every restart (and every ablation variant) would pay again. Keyed by the
        tokenizer's fingerprint (a tokenizer without one is not cached)."""
        fingerprint = getattr(self.tokenizer, "fingerprint", None)
        if not fingerprint:
            return [self.text_ids(i) for i in range(len(self.entries))]
        file = self.cache.directory / f"text_ids-{fingerprint[:16]}.json"
        try:
            known: dict[str, list[int]] = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except (OSError, ValueError) as exc:
            log.warning("text id cache %s is unreadable (%s); encoding the transcripts again", file, exc)
            known = {}
        ids, added = [], False
        for i, entry in enumerate(self.entries):
            if entry.text not in known:
                known[entry.text], added = self.text_ids(i), True
            ids.append(known[entry.text])
        if added:
            tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known), encoding="utf-8")
            os.replace(tmp, file)
        return ids

    def _posterior(self, entry: ManifestEntry) -> tuple[Tensor, Tensor]:
        found = self.cache.get(entry.audio)
        if found is None:
            raise DatasetError(f"latent cache entry for {entry.audio} is missing or unreadable; refill the cache")
        return found

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.entries)} utterances")
        mu, logstd = self._posterior(self.entries[index])
        j, start_s = self.prompt_choice(index)
        p_mu, p_logstd = self._posterior(self.entries[j])
        start = min(int(round(start_s * self.latent_rate)), max(0, p_mu.shape[0] - 1))
        stop = start + max(1, int(round(self.max_prompt_seconds * self.latent_rate)))
        return {"text": torch.tensor(self._ids[index], dtype=torch.long), "mu": mu, "logstd": logstd,
                "prompt_mu": p_mu[start:stop], "prompt_logstd": p_logstd[start:stop], "index": index,
                "prompt_index": j, "speaker": self.entries[index].speaker}


def collate_latents(items: list[dict[str, Any]]) -> Posteriors:
    """Right-pad :class:`LatentTTSDataset` items into a :class:`Posteriors` batch (zeros as padding)."""
    (text, text_lengths), (mu, frames), (logstd, _), (prompt_mu, prompt_frames), (prompt_logstd, _) = pad_fields(
        items, "text", "mu", "logstd", "prompt_mu", "prompt_logstd")
    return Posteriors(text, text_lengths, mu, logstd, frames, prompt_mu, prompt_logstd, prompt_frames)

"""Audio samples for the training logs: VAE reconstructions and syntheses from text + prompt.

The sampler here is deliberately minimal (ancestral sampling with the KV cache, a fixed
temperature, stop at p > 0.5): it shows how training goes. The inference package has the full one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llamavoice.models.llamavoice import Batch, LlamaVoice, Posteriors

if TYPE_CHECKING:
    from llamavoice.train.stages import Stage


@torch.no_grad()
def synthesize(model: LlamaVoice, batch: Batch | Posteriors, index: int, temperature: float = 0.7,
               max_seconds: float = 10.0) -> Tensor:
    """Speak item ``index``'s text in its prompt's voice."""
    spl = model.config.audio.samples_per_latent
    i = slice(index, index + 1)
    text, text_len = batch.text[i, : int(batch.text_lengths[index])], batch.text_lengths[i]
    if isinstance(batch, Posteriors):
        prompt_frames = batch.prompt_frames[i]
        prompt_u = model.flow(batch.prompt_mu[i, : int(prompt_frames)])[0]
    else:
        prompt_audio = batch.prompt_audio[i, : int(batch.prompt_lengths[index])]
        prompt_u = model.encode_prompt(prompt_audio, batch.prompt_lengths[i])
        prompt_frames = model.vae.num_frames(batch.prompt_lengths[i])
    max_groups = max(1, int(max_seconds * model.sample_rate / spl) // model.lm.r)
    hidden, cache = model.lm.prefill(text, text_len, prompt_u, prompt_frames, room=max_groups)
    groups = []
    for _ in range(max_groups):
        mu, logstd, stop = model.lm.heads(hidden[:, None])
        if torch.sigmoid(stop[0, 0]) > 0.5 and groups:
            break
        group = mu[:, 0] + temperature * logstd[:, 0].exp() * torch.randn_like(mu[:, 0])
        groups.append(group)
        hidden = model.lm.step(group, cache)
    u = torch.cat(groups, dim=1)
    return model.vae.decode(model.flow.inverse(u))[0]


@torch.no_grad()
def log_samples(stage: Stage, batch: Batch | Posteriors, count: int) -> list[tuple[str, Tensor, dict[str, Tensor]]]:
    """(name, waveform, {title: log-mel}) for the first ``count`` items of a validation batch:
    VAE reconstructions (stages vae, decoder, decoder_lm, joint) and/or syntheses from text + prompt
    (stages lm, joint)."""
    model, spl = stage.model, stage.spl
    out = []
    for i in range(min(count, batch.text.shape[0])):
        if isinstance(batch, Posteriors):  # the recording as the VAE hears it
            real = model.vae.decode(batch.mu[i : i + 1, : int(batch.frames[i])]).float()
        else:
            real = batch.audio[i : i + 1, : int(batch.audio_lengths[i]) // spl * spl]
        real_mel = model.vae.mel(real)[0]
        if stage.name in ("vae", "decoder", "decoder_lm", "joint"):
            mu, _ = model.vae.encode(real)
            recon = model.vae.decode(mu).float()
            out.append((f"recon_{i}", recon[0], {"target": real_mel, "reconstruction": model.vae.mel(recon)[0]}))
        if stage.name in ("lm", "joint"):
            wav = synthesize(model, batch, i).float()
            out.append((f"tts_{i}", wav, {"recording": real_mel, "synthesized": model.vae.mel(wav[None])[0]}))
    return out

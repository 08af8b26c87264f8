"""LlamaVoice: VAE + flow + latent LM in one module, with the training losses and save/load.

A model directory holds ``config.json`` (format version, package version, the ModelConfig),
``model.safetensors`` (weights; never pickle) and the tokenizer files. The same config rebuilds
the model at load time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from llamavoice.config import ModelConfig
from llamavoice.errors import CheckpointError, ConfigError, TokenizerError
from llamavoice.losses import (
    diagonality,
    frame_mask,
    guided_attention_loss,
    latent_kl,
    standard_normal_kl,
    stop_loss,
)
from llamavoice.models.flow import LatentFlow
from llamavoice.models.lm import LatentLM
from llamavoice.models.vae import VAE
from llamavoice.text.tokenizer import TextTokenizer
from llamavoice.version import FORMAT_VERSION, __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class Batch:
    """A training batch. Audio is at the model's sample rate; lengths count samples/tokens."""

    text: Tensor  # (B, L) token ids
    text_lengths: Tensor  # (B,)
    audio: Tensor  # (B, S) the utterance to speak
    audio_lengths: Tensor  # (B,)
    prompt_audio: Tensor  # (B, P) another utterance of the same speaker
    prompt_lengths: Tensor  # (B,)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass
class Posteriors:
    """What the LM losses need: text ids and VAE posteriors of the target and the voice prompt.
    Stage ``lm`` on cached posteriors trains on batches of these (data/latents.py)."""

    text: Tensor  # (B, L)
    text_lengths: Tensor  # (B,)
    mu: Tensor  # (B, T, D)
    logstd: Tensor  # (B, T, D)
    frames: Tensor  # (B,) latent frames
    prompt_mu: Tensor  # (B, P, D)
    prompt_logstd: Tensor  # (B, P, D)
    prompt_frames: Tensor  # (B,)

    def to(self, device: torch.device | str) -> Posteriors:
        return Posteriors(**{k: v.to(device) for k, v in self.__dict__.items()})


class LlamaVoice(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: TextTokenizer | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.vocab_size > config.text.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the config allows "
                f"text.vocab_size={config.text.vocab_size}; raise text.vocab_size or retrain the tokenizer"
            )
        latent_dim = config.vae.latent_dim
        self.vae = VAE(config.audio, config.vae)
        self.flow = LatentFlow(latent_dim, config.flow)
        self.lm = LatentLM(config.lm, latent_dim, config.text.vocab_size)

    @property
    def sample_rate(self) -> int:
        return self.config.audio.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- latents ------------------------------------------------------------------------------
    def flow_packed(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Apply the flow to real frames only (padding never reaches ActNorm's data init)."""
        u = torch.zeros_like(z, dtype=torch.float32)
        logdet = torch.zeros(z.shape[:-1], device=z.device, dtype=torch.float32)
        u_real, logdet_real = self.flow(z[mask])
        u = u.masked_scatter(mask[..., None], u_real)
        logdet = logdet.masked_scatter(mask, logdet_real)
        return u, logdet

    def encode_prompt(self, audio: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Prompt waveforms → flow-space latents u (B, T, D) for the LM prefix."""
        mu, logstd = self.vae.encode(audio)
        z = VAE.sample(mu, logstd, generator)
        mask = frame_mask(self.vae.num_frames(lengths), z.shape[1])
        return self.flow_packed(z, mask)[0]

    # --- training -------------------------------------------------------------------------------
    def lm_losses(self, batch: Batch, train_encoder: bool = False, prior_weight: float = 0.0,
                  drop_text: bool = False) -> dict[str, Tensor]:
        """KL + stop (+ alignment) losses of the LM through the flow, from audio. With ``train_encoder``
        (stage ``joint``) gradients reach the VAE encoder and the σ-VAE prior term is added."""
        with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
            posteriors = self.posteriors(batch)
        losses = self.lm_losses_from_posteriors(posteriors, prior_weight, drop_text)
        if train_encoder:
            post_mu, post_logstd = posteriors.mu, posteriors.logstd
            losses["vae_kl"] = standard_normal_kl(post_mu, post_logstd, frame_mask(posteriors.frames, post_mu.shape[1]))
            losses["total"] = losses["total"] + self.config.loss.vae_kl_weight * losses["vae_kl"]
        return losses

    def posteriors(self, batch: Batch) -> Posteriors:
        """The VAE posteriors of a batch's target and voice prompt (what the LM trains on)."""
        mu, logstd = self.vae.encode(batch.audio)
        prompt_mu, prompt_logstd = self.vae.encode(batch.prompt_audio)
        return Posteriors(batch.text, batch.text_lengths, mu, logstd, self.vae.num_frames(batch.audio_lengths),
                          prompt_mu, prompt_logstd, self.vae.num_frames(batch.prompt_lengths))

    def sampled_flow_latents(self, batch: Posteriors) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Posterior samples through the flow: target u, its log-det, its frame mask, prompt u."""
        mask = frame_mask(batch.frames, batch.mu.shape[1])
        u, logdet = self.flow_packed(VAE.sample(batch.mu, batch.logstd), mask)
        prompt_mask = frame_mask(batch.prompt_frames, batch.prompt_mu.shape[1])
        u_prompt, _ = self.flow_packed(VAE.sample(batch.prompt_mu, batch.prompt_logstd), prompt_mask)
        return u, logdet, mask, u_prompt

    def lm_losses_from_posteriors(self, batch: Posteriors, prior_weight: float = 0.0,
                                  drop_text: bool = False) -> dict[str, Tensor]:
        """The LM losses given VAE posteriors (stage ``lm`` trains on cached ones, see data/latents.py).

        ``prior_weight`` scales the alignment block's beta-binomial prior; ``drop_text`` removes every
        item's text (the text-use diagnostic: how much worse the LM does without it)."""
        cfg = self.config
        frames, prompt_frames, text_lengths = batch.frames, batch.prompt_frames, batch.text_lengths
        u, logdet, mask, u_prompt = self.sampled_flow_latents(batch)

        if drop_text:
            text_lengths = torch.zeros_like(text_lengths)
        elif self.training:
            # Conditioning dropout: lets classifier-free guidance contrast with/without text/prompt.
            keep_text = torch.rand(text_lengths.shape, device=u.device) >= cfg.lm.text_dropout
            text_lengths = text_lengths * keep_text
        if self.training:
            keep_prompt = torch.rand(prompt_frames.shape, device=u.device) >= cfg.lm.prompt_dropout
            prompt_frames = prompt_frames * keep_prompt
        lm_input = u
        if self.training and cfg.lm.input_noise > 0:
            lm_input = u + cfg.lm.input_noise * torch.randn_like(u)

        out = self.lm(batch.text, text_lengths, u_prompt, prompt_frames, lm_input, frames, prior_weight)
        groups = self.lm.num_groups(frames)
        losses = {
            "kl": latent_kl(batch.logstd, u, logdet, out.mu, out.logstd, mask),
            "stop": stop_loss(out.stop_logits, groups, cfg.loss.stop_pos_weight),
        }
        total = cfg.loss.kl_weight * losses["kl"] + cfg.loss.stop_weight * losses["stop"]
        if out.alignment is not None:
            # Items whose text was dropped (guidance) have no alignment to learn.
            losses["align"] = guided_attention_loss(out.alignment, text_lengths, groups, cfg.loss.align_sigma)
            losses["diagonality"] = diagonality(out.alignment, text_lengths, groups).detach()
            if cfg.loss.align_weight > 0:
                total = total + cfg.loss.align_weight * losses["align"]
        losses["total"] = total
        return losses

    @torch.no_grad()
    def teacher_forced_latents(self, batch: Batch, temperature: float) -> Tensor:
        """What the LM says for every frame of ``batch.audio`` given the true frames before it
        (teacher forcing), sampled as at inference (u = μ + τσε) and mapped back through the flow:
        z-latents (B, T, D), frame for frame aligned with the audio; padding frames are 0. Stage
        ``decoder_lm`` trains the voice decoder on these. Call in eval mode (no dropouts)."""
        posteriors = self.posteriors(batch)
        u, _, mask, u_prompt = self.sampled_flow_latents(posteriors)
        out = self.lm(batch.text, batch.text_lengths, u_prompt, posteriors.prompt_frames, u, posteriors.frames)
        u_said = out.mu + temperature * out.logstd.exp() * torch.randn_like(out.mu)
        said = mask[:, : u_said.shape[1]]  # the LM's output stops at the longest item's last frame
        z = torch.zeros_like(u)
        z[:, : u_said.shape[1]][said] = self.flow.inverse(u_said[said]).float()
        return z

    # --- save / load ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config.json, model.safetensors and the tokenizer. ``dtype`` (e.g. torch.float16)
        stores floating-point weights at lower precision; they load back as fp32."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is None:
            raise CheckpointError("cannot save a model without a tokenizer: attach one first (model.tokenizer)")
        state = {}
        for name, tensor in self.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format_version": FORMAT_VERSION})
        meta = {
            "format_version": FORMAT_VERSION,
            "llamavoice_version": __version__,
            "model": self.config.to_dict(),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        self.tokenizer.save(directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LlamaVoice:
        """Load a model directory written by ``save_pretrained``; refuses anything it cannot trust."""
        directory = Path(directory)
        config = read_model_config(directory)
        try:
            tokenizer = TextTokenizer.load(directory)
        except TokenizerError as exc:
            raise CheckpointError(f"model directory {directory}: {exc}") from exc
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"model directory {directory} has no {WEIGHTS_FILE}; re-export the model")
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights} is corrupt or truncated ({exc}); re-export or re-download it") from exc
        model = cls(config, tokenizer)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad_shapes = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
        if missing or unexpected or bad_shapes:
            raise CheckpointError(
                f"{weights} does not match its config: {len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(bad_shapes)} wrongly shaped tensors (e.g. {(missing + unexpected + bad_shapes)[:3]}); "
                "the weights and config.json come from different models"
            )
        # load_state_dict casts each tensor as it copies it (fp16 file -> fp32 weights) without a
        # second full-precision copy of the state: ~110 MB less peak memory for `small`.
        model.load_state_dict(state)
        return model.to(device=device, dtype=dtype).eval()

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {"vae_encoder": self.vae.encoder, "vae_decoder": self.vae.decoder, "flow": self.flow, "lm": self.lm}
        sizes = {name: count(m) for name, m in parts.items()}
        sizes["total"] = sum(sizes.values())
        return sizes


def read_model_config(directory: Path) -> ModelConfig:
    """config.json → ModelConfig, checking the checkpoint format version."""
    if not directory.exists():
        raise CheckpointError(f"model directory not found: {directory}")
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass the folder written by save_pretrained")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}: it is not a LlamaVoice model directory")
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt ({exc}); re-export the model") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a JSON {type(meta).__name__}, not a model config; re-export the model")
    version = str(meta.get("format_version", "missing"))
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise CheckpointError(
            f"{directory} was saved in checkpoint format {version} (llamavoice "
            f"{meta.get('llamavoice_version', '?')}); this llamavoice {__version__} reads format "
            f"{FORMAT_VERSION}. Install the matching llamavoice version to use it."
        )
    try:
        return ModelConfig.from_dict(meta["model"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path} holds no valid model config ({exc})") from exc

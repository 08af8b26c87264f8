"""The three training stages: which weights train, with which optimizers, on which losses.

- ``vae``: VAE encoder + decoder against the discriminators (mel L1 + GAN + feature matching +
  a small KL to N(0, I)); the discriminators join after ``disc_start_step``.
- ``decoder``: the same with the encoder frozen (the latent space, flow and LM stay valid).
- ``decoder_lm``: the decoder again, on the LM's teacher-forced latents instead of the posterior's.
- ``lm``: flow + LM on the frozen VAE (eval mode, no grad): latent KL + stop BCE (+ alignment).
- ``joint``: everything; the LM loss reaches the VAE encoder scaled by ``lm_kl_weight_into_encoder``.

Each stage wraps the LlamaVoice in a module whose ``forward`` computes the generator-side outputs
in one call: accelerate/DDP only synchronizes gradients for work done inside a prepared module's
``forward``. One optimizer step is :meth:`Stage.train_step`: :meth:`Stage.optimize` runs the
``grad_accum`` micro-batches and steps through :func:`~llamavoice.train.optim.guarded_step` (the
NaN guard). Losses live in :mod:`llamavoice.losses`, the discriminators in
:mod:`llamavoice.models.discriminators`, optimizers and schedule in :mod:`llamavoice.train.optim`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from llamavoice.losses import VAELosses, standard_normal_kl
from llamavoice.models.discriminators import Discriminators
from llamavoice.models.llamavoice import Batch, LlamaVoice, Posteriors
from llamavoice.models.vae import VAE
from llamavoice.train.config import OptimConfig, TrainConfig, align_prior_weight
from llamavoice.train.optim import guarded_step, make_scheduler, param_groups, trainable


# --------------------------------------------------------------------------------------------------
# Generator-side modules (what accelerate prepares first; they hold the LlamaVoice as ``.model``)
# --------------------------------------------------------------------------------------------------
class VAEForward(nn.Module):
    """Audio segments → posterior, sampled latents, reconstruction; or given latents → their audio."""

    def __init__(self, model: LlamaVoice):
        super().__init__()
        self.model = model

    def forward(self, segments: Tensor, latents: Tensor | None = None) -> dict[str, Tensor]:
        if latents is not None:
            return {"fake": self.model.vae.decode(latents)}
        mu, logstd = self.model.vae.encode(segments)
        fake = self.model.vae.decode(VAE.sample(mu, logstd))
        return {"fake": fake, "mu": mu, "logstd": logstd}


class LMForward(nn.Module):
    """Batch → LM losses (KL through the flow + stop), with the VAE frozen."""

    def __init__(self, model: LlamaVoice):
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> LMForward:
        super().train(mode)
        self.model.vae.eval()  # frozen: no dropout/ActNorm-style updates, ever
        return self

    def forward(self, batch: Batch | Posteriors, prior_weight: float = 0.0) -> dict[str, Tensor]:
        return lm_losses(self.model, batch, prior_weight)


def lm_losses(model: LlamaVoice, batch: Batch | Posteriors, prior_weight: float = 0.0,
              drop_text: bool = False) -> dict[str, Tensor]:
    """The LM losses of an audio batch or of a batch of cached posteriors."""
    if isinstance(batch, Posteriors):
        return model.lm_losses_from_posteriors(batch, prior_weight, drop_text)
    return model.lm_losses(batch, prior_weight=prior_weight, drop_text=drop_text)


def scale_grad(x: Tensor, weight: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``weight`` in the backward pass."""
    return x * weight + x.detach() * (1.0 - weight)


@contextmanager
def encoder_grad_scale(encoder: nn.Module, weight: float) -> Iterator[None]:
    """Scale the gradient that flows into ``encoder`` through its outputs (μ, log σ) by ``weight``."""
    if weight == 1.0:
        yield
        return

    def hook(_module: nn.Module, _inputs: Any, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return tuple(scale_grad(o, weight) for o in output)

    handle = encoder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class JointForward(nn.Module):
    """Both objectives in one forward: VAE reconstruction of segments and LM losses of the batch."""

    def __init__(self, model: LlamaVoice, lm_weight_into_encoder: float):
        super().__init__()
        self.model = model
        self.lm_weight_into_encoder = lm_weight_into_encoder

    def forward(self, batch: Batch, segments: Tensor) -> dict[str, Tensor]:
        mu, logstd = self.model.vae.encode(segments)
        fake = self.model.vae.decode(VAE.sample(mu, logstd))
        with encoder_grad_scale(self.model.vae.encoder, self.lm_weight_into_encoder):
            lm = self.model.lm_losses(batch, train_encoder=self.lm_weight_into_encoder > 0)
        return {"fake": fake, "mu": mu, "logstd": logstd, **{f"lm_{k}": v for k, v in lm.items()}}


@dataclass
class StepResult:
    losses: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # the NaN/inf guard skipped at least one optimizer this step
    frames: int = 0  # latent frames trained on (throughput)
    utterances: int = 0


def _frames(batch: Batch | Posteriors, samples_per_latent: int) -> int:
    if isinstance(batch, Posteriors):
        return int(batch.frames.sum())
    return int((batch.audio_lengths // samples_per_latent).sum())


def random_segments(batch: Batch, seconds: float, sample_rate: int, hop: int) -> Tensor:
    """One random crop per item, all of the same length: ``seconds`` or the shortest item, rounded
    down to whole latent frames. Uses the global torch RNG (restored on resume)."""
    shortest = int(batch.audio_lengths.min())
    length = min(int(seconds * sample_rate), shortest)
    length = max(hop, (length // hop) * hop)
    starts = []
    for n in batch.audio_lengths.tolist():
        slack = max(0, int(n) - length)
        starts.append(int(torch.randint(0, slack + 1, (1,)).item()))
    index = torch.tensor(starts, device=batch.audio.device)[:, None] + torch.arange(length, device=batch.audio.device)
    index = index.clamp(max=batch.audio.shape[1] - 1)
    return batch.audio.gather(1, index)


def paired_crops(batch: Batch, latents: Tensor, seconds: float, sample_rate: int, spl: int) -> tuple[Tensor, Tensor]:
    """One random crop per item of the audio and of its latents (B, T, D), covering the same frames:
    ``seconds`` or the shortest item, in whole latent frames. Uses the global torch RNG."""
    frames = batch.audio_lengths // spl
    n = max(1, min(int(seconds * sample_rate) // spl, int(frames.min())))
    device = latents.device
    starts = torch.stack([torch.randint(0, max(1, int(f) - n + 1), ()) for f in frames.tolist()]).to(device)
    frame_index = starts[:, None] + torch.arange(n, device=device)
    crops = latents.gather(1, frame_index[..., None].expand(-1, -1, latents.shape[-1]))
    sample_index = starts[:, None] * spl + torch.arange(n * spl, device=device)
    return batch.audio.gather(1, sample_index), crops


def _own_storage(module: torch.nn.Module) -> None:
    """Give every buffer its own storage. Vocos' ISTFT window is a view into a larger tensor, which
    safetensors (used by accelerate's load_state) refuses to load into."""
    for sub in module.modules():
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.untyped_storage().nbytes() != buf.numel() * buf.element_size():
                sub._buffers[name] = buf.clone()


def _all_finite(values: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v.detach()).all()) for v in values.values())


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------
class Stage:
    """Owns the stage's modules, optimizers and schedulers, and runs one optimizer step."""

    name = ""

    def __init__(self, model: LlamaVoice, cfg: TrainConfig, accelerator: Any):
        self.model = model  # the plain LlamaVoice (never DDP-wrapped): for export, EMA, samples
        self.cfg = cfg
        self.accelerator = accelerator
        self.spl = model.config.audio.samples_per_latent
        self.sample_rate = model.sample_rate
        # Filled by subclasses, in this order (it is the order of accelerate's optimizer_N.bin files).
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.forward_module: nn.Module

    def add_optimizer(self, name: str, params: list[tuple[str, nn.Parameter]], opt: OptimConfig,
                      more: tuple[list[tuple[str, nn.Parameter]], OptimConfig] | None = None) -> None:
        """AdamW over ``params`` (and a second set with its own settings), with the LR schedule."""
        groups = param_groups(params, opt) + (param_groups(*more) if more is not None else [])
        self.optimizers[name] = torch.optim.AdamW(groups)
        self.schedulers[name] = make_scheduler(self.optimizers[name], self.cfg)

    def prepare(self) -> None:
        """Hand modules, optimizers and schedulers to accelerate (DDP, autocast, devices)."""
        acc = self.accelerator
        names = list(self.optimizers)
        for module in (self.forward_module, *self.extra_modules()):
            _own_storage(module)
        prepared = acc.prepare(self.forward_module, *self.extra_modules(), *self.optimizers.values(),
                               *self.schedulers.values())
        self.forward_module = prepared[0]
        n_extra = len(self.extra_modules())
        self._set_extra_modules(prepared[1 : 1 + n_extra])
        opts = prepared[1 + n_extra : 1 + n_extra + len(names)]
        scheds = prepared[1 + n_extra + len(names) :]
        self.optimizers = dict(zip(names, opts, strict=True))
        self.schedulers = dict(zip(names, scheds, strict=True))

    def extra_modules(self) -> list[nn.Module]:
        return []

    def _set_extra_modules(self, modules: Any) -> None:
        pass

    def train(self) -> None:
        self.forward_module.train()
        for module in self.extra_modules():
            module.train()

    def ema_names(self) -> list[str]:
        """LlamaVoice parameter names the EMA tracks (those this stage trains)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def optimize(self, name: str, module: nn.Module, micro: list[Any], losses_of: Callable[[Any], dict[str, Tensor]],
                 params: list[nn.Parameter], backward_to_params_only: bool = False
                 ) -> tuple[dict[str, float], float, bool]:
        """One step of optimizer ``name`` over the micro-batches of a gradient accumulation.

        ``losses_of(item)`` runs the forward of one micro-batch (through ``module``, the prepared
        module whose gradients DDP all-reduces, only on the last micro-batch) and returns its losses;
        ``total / n`` is backpropagated (only into ``params`` with ``backward_to_params_only``).
        Returns the mean of each loss over the micro-batches, the gradient norm and whether the NaN
        guard skipped the step."""
        acc, n = self.accelerator, len(micro)
        backward_kwargs = {"inputs": params} if backward_to_params_only else {}
        totals: dict[str, float] = {}
        finite = True
        for i, item in enumerate(micro):
            with nullcontext() if i == n - 1 else acc.no_sync(module):
                losses = losses_of(item)
                acc.backward(losses["total"] / n, **backward_kwargs)
            finite &= _all_finite(losses)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
        norm, skipped = guarded_step(acc, self.optimizers[name], self.schedulers[name], params,
                                     self.cfg.clip_grad_norm, finite)
        return totals, norm, skipped

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        raise NotImplementedError

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError


class GANMixin:
    """What the ``vae`` and ``joint`` stages share: the discriminators, their half-step, and the
    generator-side VAE losses."""

    disc: nn.Module
    vae_losses: VAELosses
    has_disc: bool

    def extra_modules(self) -> list[nn.Module]:
        return [self.disc] if self.has_disc else []

    def _set_extra_modules(self, modules: Any) -> None:
        if self.has_disc:
            (self.disc,) = modules

    def disc_active(self, step: int) -> bool:
        return self.has_disc and step >= self.cfg.disc_start_step

    def _build_gan(self, model: LlamaVoice, cfg: TrainConfig) -> None:
        self.disc = Discriminators(model.config.loss)
        self.has_disc = len(self.disc.nets) > 0
        self.vae_losses = VAELosses(model.config.audio, model.config.loss).to(self.accelerator.device)
        if self.has_disc:
            self.add_optimizer("disc", list(self.disc.named_parameters()), cfg.disc_optim)

    def segments(self, micro_batches: list[Batch]) -> list[Tensor]:
        return [random_segments(b, self.cfg.vae_segment_seconds, self.sample_rate, self.spl) for b in micro_batches]

    def disc_half_step(self, pairs: list[tuple[Tensor, Tensor | None]], result: StepResult) -> None:
        """Discriminator update on fresh reconstructions (no generator gradients needed). Each pair is
        an audio segment and the latents to decode, or None: the segment's own, through the VAE."""

        def losses_of(pair: tuple[Tensor, Tensor | None]) -> dict[str, Tensor]:
            real, latents = pair
            with torch.no_grad(), self.accelerator.autocast():
                if latents is None:
                    mu, logstd = self.model.vae.encode(real)
                    latents = VAE.sample(mu, logstd)
                fake = self.model.vae.decode(latents).float()
            return self.vae_losses.discriminator(self.disc(real, fake))

        totals, norm, skipped = self.optimize("disc", self.disc, pairs, losses_of, list(self.disc.parameters()))
        result.losses.update({f"disc_{k}": v for k, v in totals.items()}, grad_norm_disc=norm)
        result.skipped |= skipped

    def gen_vae_losses(self, real: Tensor, out: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Mel L1 (+ GAN and feature matching once the discriminators are on) + KL to N(0, I)."""
        fake = out["fake"].float()
        # The plain (un-wrapped) discriminators: no DDP bookkeeping for a pass whose discriminator
        # gradients are never used (the backward only reaches the generator's parameters).
        disc = self.accelerator.unwrap_model(self.disc)
        disc_out = None
        if self.disc_active(step):
            with self.accelerator.autocast():
                disc_out = disc(real, fake)
        losses = self.vae_losses.generator(real, fake, disc_out)
        if "mu" in out:  # the encoder made the latents (not stage decoder_lm)
            mask = torch.ones(out["mu"].shape[:2], dtype=torch.bool, device=real.device)
            losses["vae_kl"] = standard_normal_kl(out["mu"], out["logstd"], mask)
            losses["total"] = losses["total"] + self.model.config.loss.vae_kl_weight * losses["vae_kl"]
        return losses

    @torch.no_grad()
    def reconstruction_losses(self, batch: Batch) -> dict[str, float]:
        """Mel L1 of full utterances reconstructed from the posterior mean, per item (no padding)."""
        mels, kls = [], []
        for i in range(batch.audio.shape[0]):
            n = int(batch.audio_lengths[i]) // self.spl * self.spl
            real = batch.audio[i : i + 1, :n]
            mu, logstd = self.model.vae.encode(real)
            fake = self.model.vae.decode(mu).float()
            mels.append(float(self.vae_losses.mel_loss(fake, real)))
            kls.append(float(standard_normal_kl(mu, logstd, torch.ones(mu.shape[:2], dtype=torch.bool,
                                                                         device=mu.device))))
        return {"mel": sum(mels) / len(mels), "vae_kl": sum(kls) / len(kls)}


class VAEStage(GANMixin, Stage):
    name = "vae"

    def __init__(self, model: LlamaVoice, cfg: TrainConfig, accelerator: Any):
        super().__init__(model, cfg, accelerator)
        model.requires_grad_(False)
        self.trained_part(model).requires_grad_(True)
        self.forward_module = VAEForward(model)
        self.gen_params = trainable(model)
        self.add_optimizer("gen", self.gen_params, cfg.vae_optim)
        self._build_gan(model, cfg)

    def decoder_pairs(self, micro_batches: list[Batch]) -> list[tuple[Tensor, Tensor | None]]:
        """What the decoder trains on: audio crops, each with the latents to decode (None: its own
        posterior sample)."""
        return [(real, None) for real in self.segments(micro_batches)]

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        result = StepResult()
        pairs = self.decoder_pairs(micro_batches)
        result.frames = sum(real.shape[0] * (real.shape[1] // self.spl) for real, _ in pairs)
        result.utterances = sum(real.shape[0] for real, _ in pairs)
        if self.disc_active(step):
            self.disc_half_step(pairs, result)

        def losses_of(pair: tuple[Tensor, Tensor | None]) -> dict[str, Tensor]:
            real, latents = pair
            return self.gen_vae_losses(real, self.forward_module(real, latents), step)

        totals, norm, skipped = self.optimize("gen", self.forward_module, pairs, losses_of,
                                              [p for _, p in self.gen_params], backward_to_params_only=True)
        result.losses.update(totals, grad_norm=norm)
        result.skipped |= skipped
        return result

    @staticmethod
    def trained_part(model: LlamaVoice) -> nn.Module:
        return model.vae

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        return self.reconstruction_losses(batch)


class DecoderStage(VAEStage):
    """The voice decoder alone, on the same losses as ``vae``: the encoder is frozen, so the latent
    space stays the one the flow and the LM were trained on, and a better decoder drops into an
    existing model (``export_run --decoder-from``) while the LM keeps training."""

    name = "decoder"

    @staticmethod
    def trained_part(model: LlamaVoice) -> nn.Module:
        return model.vae.decoder


class DecoderOnLMStage(DecoderStage):
    """The voice decoder fine-tuned on what the LM says rather than on the VAE posterior: the LM,
    teacher-forced on each utterance and sampled at ``decoder_lm_temperature`` (as at inference),
    gives latents aligned frame for frame with the real audio, which stays the target. This is
    Tacotron 2's ground-truth-aligned vocoder fine-tuning: the decoder learns to render the LM's
    slightly off-manifold latents clearly. The LM, flow and encoder stay frozen and in eval mode."""

    name = "decoder_lm"

    def train(self) -> None:
        super().train()
        for frozen in (self.model.vae.encoder, self.model.flow, self.model.lm):
            frozen.eval()  # no prenet dropout, no ActNorm data init: the LM as it speaks

    def decoder_pairs(self, micro_batches: list[Batch]) -> list[tuple[Tensor, Tensor | None]]:
        pairs = []
        for batch in micro_batches:
            with self.accelerator.autocast():
                latents = self.model.teacher_forced_latents(batch, self.cfg.decoder_lm_temperature)
            pairs.append(paired_crops(batch, latents, self.cfg.vae_segment_seconds, self.sample_rate, self.spl))
        return pairs

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        """The posterior reconstruction's mel L1 and that of the LM's teacher-forced latents."""
        losses = self.reconstruction_losses(batch)
        mels = []
        for i in range(batch.audio.shape[0]):
            item = Batch(**{k: v[i : i + 1] for k, v in batch.__dict__.items()})
            n = int(item.audio_lengths[0]) // self.spl
            latents = self.model.teacher_forced_latents(item, self.cfg.decoder_lm_temperature)[:, :n]
            fake = self.model.vae.decode(latents).float()
            mels.append(float(self.vae_losses.mel_loss(fake, item.audio[:, : n * self.spl])))
        losses["mel_lm"] = sum(mels) / len(mels)
        return losses


class LMStage(Stage):
    name = "lm"

    def __init__(self, model: LlamaVoice, cfg: TrainConfig, accelerator: Any):
        super().__init__(model, cfg, accelerator)
        model.requires_grad_(False)
        model.flow.requires_grad_(True)
        model.lm.requires_grad_(True)
        self.forward_module = LMForward(model)
        self.gen_params = trainable(model)
        self.add_optimizer("gen", self.gen_params, cfg.lm_optim)

    def train_step(self, micro_batches: list[Batch | Posteriors], step: int) -> StepResult:
        result = StepResult()
        prior_weight = align_prior_weight(self.cfg, step)
        totals, norm, skipped = self.optimize("gen", self.forward_module, micro_batches,
                                              lambda batch: self.forward_module(batch, prior_weight),
                                              [p for _, p in self.gen_params])
        result.losses.update(totals, align_prior=prior_weight, grad_norm=norm)
        result.skipped = skipped
        result.frames = sum(_frames(batch, self.spl) for batch in micro_batches)
        result.utterances = sum(batch.text.shape[0] for batch in micro_batches)
        return result

    @torch.no_grad()
    def val_losses(self, batch: Batch | Posteriors) -> dict[str, float]:
        """Losses without the prior (as at inference), and the text-use gap: how much higher the KL
        is when the text is removed. Near 0 means the LM ignores the text (it babbles)."""
        losses = {k: float(v) for k, v in lm_losses(self.model, batch).items()}
        losses["text_gap"] = float(lm_losses(self.model, batch, drop_text=True)["kl"]) - losses["kl"]
        return losses


class JointStage(GANMixin, Stage):
    name = "joint"

    def __init__(self, model: LlamaVoice, cfg: TrainConfig, accelerator: Any):
        super().__init__(model, cfg, accelerator)
        model.requires_grad_(True)
        self.forward_module = JointForward(model, cfg.lm_kl_weight_into_encoder)
        vae_params = trainable(model.vae)
        lm_params = trainable(model.flow) + trainable(model.lm)
        self.gen_params = vae_params + lm_params
        self.add_optimizer("gen", vae_params, cfg.vae_optim, more=(lm_params, cfg.lm_optim))
        self._build_gan(model, cfg)

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        loss_cfg = self.model.config.loss
        result = StepResult()
        segments = self.segments(micro_batches)
        if self.disc_active(step):
            self.disc_half_step([(real, None) for real in segments], result)

        def losses_of(pair: tuple[Batch, Tensor]) -> dict[str, Tensor]:
            batch, real = pair
            out = self.forward_module(batch, real)
            losses = self.gen_vae_losses(real, out, step)
            losses["kl"], losses["stop"] = out["lm_kl"], out["lm_stop"]
            # The σ-VAE prior is already in the VAE part; lm_losses' own copy would count it twice.
            total = losses["total"]
            losses["total"] = total + loss_cfg.kl_weight * out["lm_kl"] + loss_cfg.stop_weight * out["lm_stop"]
            return losses

        pairs = list(zip(micro_batches, segments, strict=True))
        totals, norm, skipped = self.optimize("gen", self.forward_module, pairs, losses_of,
                                              [p for _, p in self.gen_params], backward_to_params_only=True)
        result.losses.update(totals, grad_norm=norm)
        result.skipped |= skipped
        result.frames = sum(int((batch.audio_lengths // self.spl).sum()) for batch in micro_batches)
        result.utterances = sum(batch.audio.shape[0] for batch in micro_batches)
        return result

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        losses = {k: float(v) for k, v in self.model.lm_losses(batch).items()}
        losses.update(self.reconstruction_losses(batch))
        return losses


STAGES = {"vae": VAEStage, "decoder": DecoderStage, "decoder_lm": DecoderOnLMStage, "lm": LMStage,
          "joint": JointStage}


def build_stage(model: LlamaVoice, cfg: TrainConfig, accelerator: Any) -> Stage:
    return STAGES[cfg.stage](model, cfg, accelerator)

"""The three training stages: which weights train, with which optimizers, on which losses.

- ``vae``: VAE encoder + decoder against Vocos' discriminators (mel L1 + GAN + feature matching +
  a small KL to N(0, I)); the discriminators join after ``disc_start_step``.
- ``lm``: flow + LM on the frozen VAE (eval mode, no grad): latent KL + stop BCE.
- ``joint``: everything; the LM loss reaches the VAE encoder scaled by ``lm_kl_weight_into_encoder``.

Each stage wraps the LlamaVoice in a module whose ``forward`` computes the generator-side outputs
in one call: accelerate/DDP only synchronizes gradients for work done inside a prepared module's
``forward``. One optimizer step is :meth:`Stage.train_step` over ``grad_accum`` micro-batches;
:func:`guarded_step` clips and steps, or skips the step when anything is not finite (NaN guard).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from vocos.discriminators import MultiPeriodDiscriminator, MultiResolutionDiscriminator

from llamavoice.config import LossConfig
from llamavoice.data.latents import LatentBatch
from llamavoice.losses import VAELosses, standard_normal_kl
from llamavoice.models.llamavoice import Batch, LlamaVoice, Posteriors
from llamavoice.models.vae import VAE
from llamavoice.train.config import OptimConfig, TrainConfig, align_prior_weight


# --------------------------------------------------------------------------------------------------
# Generator-side modules (what accelerate prepares first; they hold the LlamaVoice as ``.model``)
# --------------------------------------------------------------------------------------------------
class VAEForward(nn.Module):
    """Audio segments → posterior, sampled latents, reconstruction."""

    def __init__(self, model: LlamaVoice):
        super().__init__()
        self.model = model

    def forward(self, segments: Tensor) -> dict[str, Tensor]:
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

    def forward(self, batch: Batch | LatentBatch, prior_weight: float = 0.0) -> dict[str, Tensor]:
        return lm_losses(self.model, batch, prior_weight)


def posteriors(batch: LatentBatch) -> Posteriors:
    return Posteriors(batch.text, batch.text_lengths, batch.mu, batch.logstd, batch.frames, batch.prompt_mu,
                      batch.prompt_logstd, batch.prompt_frames)


def lm_losses(model: LlamaVoice, batch: Batch | LatentBatch, prior_weight: float = 0.0,
              drop_text: bool = False) -> dict[str, Tensor]:
    """The LM losses of an audio batch or of a batch of cached posteriors."""
    if isinstance(batch, LatentBatch):
        return model.lm_losses_from_posteriors(posteriors(batch), prior_weight, drop_text)
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


# --------------------------------------------------------------------------------------------------
# Adversarial part: only the discriminators with a non-zero loss weight are built and run
# --------------------------------------------------------------------------------------------------
class GANDiscriminators(nn.Module):
    """Vocos' multi-period (MPD) and multi-resolution (MRD) discriminators, each only if its loss
    weight is > 0. MPD dominates the cost of VAE training on a CPU (about 3x MRD and far more than
    the VAE itself), so CPU configs turn it off with ``model.loss.mpd_weight: 0``."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.nets = nn.ModuleDict()
        if cfg.mpd_weight > 0:
            self.nets["mpd"] = MultiPeriodDiscriminator()
        if cfg.mrd_weight > 0:
            self.nets["mrd"] = MultiResolutionDiscriminator()

    def forward(self, real: Tensor, fake: Tensor) -> dict[str, tuple]:
        """name → (real scores, fake scores, real feature maps, fake feature maps)."""
        return {name: net(y=real, y_hat=fake) for name, net in self.nets.items()}


def generator_losses(vl: VAELosses, real: Tensor, fake: Tensor, disc_out: dict[str, tuple] | None) -> dict[str, Tensor]:
    """Mel L1 (×mel_weight) + per discriminator: hinge adversarial + feature matching (×its weight)."""
    cfg = vl.cfg
    losses = {"mel": vl.mel_loss(fake.float(), real.float())}
    total = cfg.mel_weight * losses["mel"]
    for name, (_, fake_scores, real_fmaps, fake_fmaps) in (disc_out or {}).items():
        adv, _ = vl.gen_loss([s.float() for s in fake_scores])
        fm = vl.fm_loss([[f.float() for f in fs] for fs in real_fmaps], [[f.float() for f in fs] for fs in fake_fmaps])
        losses[f"adv_{name}"], losses[f"fm_{name}"] = adv.squeeze(), fm.squeeze()
        total = total + getattr(cfg, f"{name}_weight") * (adv.squeeze() + cfg.feature_matching_weight * fm.squeeze())
    losses["total"] = total
    return losses


def discriminator_losses(vl: VAELosses, disc_out: dict[str, tuple]) -> dict[str, Tensor]:
    losses: dict[str, Tensor] = {}
    total = 0.0
    for name, (real_scores, fake_scores, _, _) in disc_out.items():
        loss, _, _ = vl.disc_loss([s.float() for s in real_scores], [s.float() for s in fake_scores])
        losses[name] = loss.squeeze()
        total = total + getattr(vl.cfg, f"{name}_weight") * loss.squeeze()
    losses["total"] = total
    return losses


# --------------------------------------------------------------------------------------------------
# Optimizers and schedule
# --------------------------------------------------------------------------------------------------
def param_groups(params: list[tuple[str, nn.Parameter]], opt: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices/kernels only, not on biases, norms, embeddings' 1-D."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    common = {"lr": opt.lr, "betas": opt.betas, "eps": opt.eps}
    return [
        {"params": decay, "weight_decay": opt.weight_decay, **common},
        {"params": no_decay, "weight_decay": 0.0, **common},
    ]


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to ``min_ratio`` at ``total``; ``step`` counts optimizer steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
    )


def _named_trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------------
# The optimizer step with the NaN guard
# --------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    losses: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # the NaN/inf guard skipped at least one optimizer this step
    frames: int = 0  # latent frames trained on (throughput)
    utterances: int = 0


def guarded_step(accelerator: Any, optimizer: Any, scheduler: Any, params: list[nn.Parameter],
                 clip: float, losses_finite: bool) -> tuple[float, bool]:
    """Clip gradients and step, unless a loss or the gradient norm is not finite.

    The decision is reduced over processes, so every rank skips together (the weights stay
    identical across ranks). A skipped step leaves weights, optimizer moments and the LR schedule
    untouched. Returns (gradient norm before clipping, skipped)."""
    accelerator.unscale_gradients(optimizer)  # fp16: true gradients before measuring them
    max_norm = clip if clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    bad = torch.tensor(float(not (losses_finite and torch.isfinite(norm).item())), device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() > 0:
        optimizer.zero_grad(set_to_none=True)
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None:  # fp16: back off the loss scale and forget this step's unscale_
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        return float(norm), True
    optimizer.step()
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm), False


def _frames(batch: Batch | LatentBatch, samples_per_latent: int) -> int:
    if isinstance(batch, LatentBatch):
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

    # Subclasses fill: self.forward_module (prepared), self.optimizers / self.schedulers (dicts).
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

    def _sync(self, module: nn.Module, last: bool) -> Any:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
        return nullcontext() if last else self.accelerator.no_sync(module)

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        raise NotImplementedError

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        raise NotImplementedError


class GANMixin:
    """Discriminator half-step shared by the ``vae`` and ``joint`` stages."""

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
        self.disc = GANDiscriminators(model.config.loss)
        self.has_disc = len(self.disc.nets) > 0
        self.vae_losses = VAELosses(model.config.audio, model.config.loss).to(self.accelerator.device)
        if self.has_disc:
            self.optimizers["disc"] = torch.optim.AdamW(param_groups(list(self.disc.named_parameters()),
                                                                    cfg.disc_optim))
            self.schedulers["disc"] = make_scheduler(self.optimizers["disc"], cfg)

    def disc_half_step(self, segments: list[Tensor], result: StepResult) -> None:
        """Discriminator update on fresh reconstructions (no generator gradients needed)."""
        acc, n = self.accelerator, len(segments)
        totals: dict[str, float] = {}
        finite = True
        for i, real in enumerate(segments):
            with torch.no_grad(), acc.autocast():
                mu, logstd = self.model.vae.encode(real)
                fake = self.model.vae.decode(VAE.sample(mu, logstd)).float()
            with self._sync(self.disc, i == n - 1):
                losses = discriminator_losses(self.vae_losses, self.disc(real, fake))
                acc.backward(losses["total"] / n)
            finite &= _all_finite(losses)
            for k, v in losses.items():
                totals[f"disc_{k}"] = totals.get(f"disc_{k}", 0.0) + float(v.detach()) / n
        norm, skipped = guarded_step(acc, self.optimizers["disc"], self.schedulers["disc"],
                                     list(self.disc.parameters()), self.cfg.clip_grad_norm, finite)
        result.losses.update(totals)
        result.losses["grad_norm_disc"] = norm
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
        losses = generator_losses(self.vae_losses, real, fake, disc_out)
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
        model.vae.requires_grad_(True)
        self.forward_module = VAEForward(model)
        self.gen_params = _named_trainable(model)
        self.optimizers = {"gen": torch.optim.AdamW(param_groups(self.gen_params, cfg.vae_optim))}
        self.schedulers = {"gen": make_scheduler(self.optimizers["gen"], cfg)}
        self._build_gan(model, cfg)

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        cfg, acc, n = self.cfg, self.accelerator, len(micro_batches)
        result = StepResult()
        segments = [random_segments(b, cfg.vae_segment_seconds, self.sample_rate, self.spl) for b in micro_batches]
        result.frames = sum(s.shape[0] * (s.shape[1] // self.spl) for s in segments)
        result.utterances = sum(s.shape[0] for s in segments)
        if self.disc_active(step):
            self.disc_half_step(segments, result)

        gen_params = [p for _, p in self.gen_params]
        finite = True
        totals: dict[str, float] = {}
        for i, real in enumerate(segments):
            with self._sync(self.forward_module, i == n - 1):
                out = self.forward_module(real)
                losses = self.gen_vae_losses(real, out, step)
                acc.backward(losses["total"] / n, inputs=gen_params)
            finite &= _all_finite(losses)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
        norm, skipped = guarded_step(acc, self.optimizers["gen"], self.schedulers["gen"], gen_params,
                                     cfg.clip_grad_norm, finite)
        result.losses.update(totals)
        result.losses["grad_norm"] = norm
        result.skipped |= skipped
        return result

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        return self.reconstruction_losses(batch)


class LMStage(Stage):
    name = "lm"

    def __init__(self, model: LlamaVoice, cfg: TrainConfig, accelerator: Any):
        super().__init__(model, cfg, accelerator)
        model.requires_grad_(False)
        model.flow.requires_grad_(True)
        model.lm.requires_grad_(True)
        self.forward_module = LMForward(model)
        self.gen_params = _named_trainable(model)
        self.optimizers = {"gen": torch.optim.AdamW(param_groups(self.gen_params, cfg.lm_optim))}
        self.schedulers = {"gen": make_scheduler(self.optimizers["gen"], cfg)}

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        acc, n = self.accelerator, len(micro_batches)
        result = StepResult()
        params = [p for _, p in self.gen_params]
        finite = True
        prior_weight = align_prior_weight(self.cfg, step)
        for i, batch in enumerate(micro_batches):
            with self._sync(self.forward_module, i == n - 1):
                losses = self.forward_module(batch, prior_weight)
                acc.backward(losses["total"] / n)
            finite &= _all_finite(losses)
            for k, v in losses.items():
                result.losses[k] = result.losses.get(k, 0.0) + float(v.detach()) / n
            result.frames += _frames(batch, self.spl)
            result.utterances += batch.text.shape[0]
        result.losses["align_prior"] = prior_weight
        norm, skipped = guarded_step(acc, self.optimizers["gen"], self.schedulers["gen"], params,
                                     self.cfg.clip_grad_norm, finite)
        result.losses["grad_norm"] = norm
        result.skipped = skipped
        return result

    @torch.no_grad()
    def val_losses(self, batch: Batch | LatentBatch) -> dict[str, float]:
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
        vae_params = _named_trainable(model.vae)
        lm_params = _named_trainable(model.flow) + _named_trainable(model.lm)
        self.gen_params = vae_params + lm_params
        groups = param_groups(vae_params, cfg.vae_optim) + param_groups(lm_params, cfg.lm_optim)
        self.optimizers = {"gen": torch.optim.AdamW(groups)}
        self.schedulers = {"gen": make_scheduler(self.optimizers["gen"], cfg)}
        self._build_gan(model, cfg)

    def train_step(self, micro_batches: list[Batch], step: int) -> StepResult:
        cfg, acc, n = self.cfg, self.accelerator, len(micro_batches)
        loss_cfg = self.model.config.loss
        result = StepResult()
        segments = [random_segments(b, cfg.vae_segment_seconds, self.sample_rate, self.spl) for b in micro_batches]
        if self.disc_active(step):
            self.disc_half_step(segments, result)
        gen_params = [p for _, p in self.gen_params]
        finite = True
        totals: dict[str, float] = {}
        for i, (batch, real) in enumerate(zip(micro_batches, segments, strict=True)):
            with self._sync(self.forward_module, i == n - 1):
                out = self.forward_module(batch, real)
                losses = self.gen_vae_losses(real, out, step)
                losses["kl"], losses["stop"] = out["lm_kl"], out["lm_stop"]
                # The σ-VAE prior is already in the VAE part; lm_losses' own copy would count it twice.
                losses["total"] = losses["total"] + loss_cfg.kl_weight * out["lm_kl"] + loss_cfg.stop_weight * out[
                    "lm_stop"]
                acc.backward(losses["total"] / n, inputs=gen_params)
            finite &= _all_finite(losses)
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) / n
            result.frames += int((batch.audio_lengths // self.spl).sum())
            result.utterances += batch.audio.shape[0]
        norm, skipped = guarded_step(acc, self.optimizers["gen"], self.schedulers["gen"], gen_params,
                                     cfg.clip_grad_norm, finite)
        result.losses.update(totals)
        result.losses["grad_norm"] = norm
        result.skipped |= skipped
        return result

    @torch.no_grad()
    def val_losses(self, batch: Batch) -> dict[str, float]:
        losses = {k: float(v) for k, v in self.model.lm_losses(batch).items()}
        losses.update(self.reconstruction_losses(batch))
        return losses


STAGES = {"vae": VAEStage, "lm": LMStage, "joint": JointStage}


def build_stage(model: LlamaVoice, cfg: TrainConfig, accelerator: Any) -> Stage:
    return STAGES[cfg.stage](model, cfg, accelerator)


# --------------------------------------------------------------------------------------------------
# Samples for the logs
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def synthesize(model: LlamaVoice, batch: Batch, index: int, temperature: float = 0.7,
               max_seconds: float = 10.0) -> Tensor:
    """Speak item ``index``'s text in its prompt's voice (ancestral sampling with the KV cache).

    A minimal sampler for training logs; the inference package has the full one."""
    spl = model.config.audio.samples_per_latent
    i = slice(index, index + 1)
    text, text_len = batch.text[i, : int(batch.text_lengths[index])], batch.text_lengths[i]
    if isinstance(batch, LatentBatch):
        prompt_frames = batch.prompt_frames[i]
        prompt_u = model.flow(batch.prompt_mu[i, : int(prompt_frames)])[0]
    else:
        prompt_audio = batch.prompt_audio[i, : int(batch.prompt_lengths[index])]
        prompt_u = model.encode_prompt(prompt_audio, batch.prompt_lengths[i])
        prompt_frames = model.vae.num_frames(batch.prompt_lengths[i])
    hidden, cache, pad_left = model.lm.prefill(text, text_len, prompt_u, prompt_frames)
    groups = []
    max_groups = max(1, int(max_seconds * model.sample_rate / spl) // model.lm.r)
    for _ in range(max_groups):
        mu, logstd, stop = model.lm.heads(hidden[:, None])
        if torch.sigmoid(stop[0, 0]) > 0.5 and groups:
            break
        group = mu[:, 0] + temperature * logstd[:, 0].exp() * torch.randn_like(mu[:, 0])
        groups.append(group)
        hidden, cache = model.lm.step(group, cache, pad_left)
    u = torch.cat(groups, dim=1)
    return model.vae.decode(model.flow.inverse(u))[0]


@torch.no_grad()
def log_samples(stage: Stage, batch: Batch, count: int) -> list[tuple[str, Tensor, dict[str, Tensor]]]:
    """(name, waveform, {title: log-mel}) for the first ``count`` items of a validation batch:
    VAE reconstructions (stages vae, joint) and/or syntheses from text + prompt (stages lm, joint)."""
    model, spl = stage.model, stage.spl
    out = []
    for i in range(min(count, batch.text.shape[0])):
        if isinstance(batch, LatentBatch):  # the recording as the VAE hears it
            real = model.vae.decode(batch.mu[i : i + 1, : int(batch.frames[i])]).float()
        else:
            real = batch.audio[i : i + 1, : int(batch.audio_lengths[i]) // spl * spl]
        real_mel = model.vae.mel(real)[0]
        if stage.name in ("vae", "joint"):
            mu, _ = model.vae.encode(real)
            recon = model.vae.decode(mu).float()
            out.append((f"recon_{i}", recon[0], {"target": real_mel, "reconstruction": model.vae.mel(recon)[0]}))
        if stage.name in ("lm", "joint"):
            wav = synthesize(model, batch, i).float()
            out.append((f"tts_{i}", wav, {"recording": real_mel, "synthesized": model.vae.mel(wav[None])[0]}))
    return out


"""Optimizers, the learning-rate schedule and the optimizer step with its NaN guard.

Every stage builds AdamW over :func:`param_groups` with a :func:`make_scheduler` schedule (linear
warm-up, then cosine), and steps through :func:`guarded_step`, which skips a step whose loss or
gradient is not finite instead of writing NaN into the weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from llamavoice.train.config import OptimConfig, TrainConfig


def trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter of ``module`` that requires grad."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


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

"""Exponential moving average of the trainable weights.

The shadow copy lives in fp32 on the model's device and is saved with the training state
(registered with ``accelerator.register_for_checkpointing``), so a resumed run continues the same
average. :meth:`swapped` temporarily puts the averaged weights into the model, for validation and
export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, names: list[str] | None = None):
        """Track ``names`` (default: every parameter that requires grad) of ``model``."""
        self.model = model
        self.decay = decay
        params = dict(model.named_parameters())
        self.names = names if names is not None else [n for n, p in params.items() if p.requires_grad]
        self.shadow = {n: params[n].detach().float().clone() for n in self.names}
        self.num_updates = 0

    def _params(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.names}

    @torch.no_grad()
    def update(self) -> None:
        # Warm-up of the decay (as in many EMA implementations): early weights are poor, so do not
        # let them dominate the average for thousands of steps.
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, param in self._params().items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the model holds the EMA weights; the live weights come back after."""
        params = self._params()
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name].to(param.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.names) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tracked weights, e.g. {sorted(missing)[:3]}")
        device = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.shadow = {n: state["shadow"][n].to(device) for n in self.names}
        self.num_updates = int(state["num_updates"])

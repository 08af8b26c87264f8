"""Where a model runs: ``--device`` checked into torch terms. (At what precision and with how many
threads: llamavoice/inference/runtime.py.)

Anything a machine cannot do (CUDA without a GPU, a GPU index that does not exist) is a one-line
ConfigError naming the fix, raised before any model is loaded.
"""

from __future__ import annotations

import torch

from llamavoice.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None picks CUDA when present; anything unusable raises ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found; use cuda:0 or cpu"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} requested but MPS is not available here; use --device cpu")
        return dev
    raise ConfigError(f"device type {dev.type!r} is not supported; use cpu or cuda")

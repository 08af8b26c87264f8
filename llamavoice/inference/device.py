"""Where and at what precision a model runs: ``--device`` and ``--dtype`` checked into torch terms.

Anything a machine cannot do (CUDA without a GPU, a GPU index that does not exist, an unknown
dtype) is a one-line ConfigError naming the fix, raised before any model is loaded.
"""

from __future__ import annotations

import torch

from llamavoice.errors import ConfigError

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


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


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """fp32, bf16 or fp16 (several spellings, or a torch dtype) → the torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use fp32, bf16 or fp16")
        return dtype
    key = str(dtype).lower()
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16")
    return _DTYPES[key]

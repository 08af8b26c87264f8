"""How a loaded model runs on this machine: the precision of each part and the CPU thread count.

Two parts do nearly all the work at inference, and they want different things (measured on the
project's 2-core Zen 5 VM, docs/performance.md):

- the **LM step** multiplies one position by every weight matrix (matrix-vector products): it is
  bound by reading the weights. int8 weights (:class:`Int8Linear`: the transformer's linear layers
  stored as int8 with one scale per output channel, multiplied in bf16, the residual stream kept in
  fp32) read 4× fewer bytes and make the step ~1.7× faster; bf16 weights help less (torch's bf16
  matrix-vector kernel is slow on this CPU).
- the **VAE decoder** runs a Vocos backbone over hundreds of mel frames at once (matrix-matrix
  products): it is bound by arithmetic. On CPUs with native bf16 dot products (AVX512-BF16 or AMX)
  its bf16 matrix products are ~4× faster than fp32 ones (the whole decoder ~2.4×); elsewhere
  bf16 would be emulated. The ISTFT head always runs in fp32.

So ``dtype="auto"`` (the default) picks, per part and device, what was measured fastest with an
inaudible difference; an explicit ``fp32`` is the exact reference. The flow, the VAE encoder and
the LM's input and output layers always stay fp32 (they are small, and the heads' error would go
straight into the predicted latents).

Threads: with ``threads="auto"`` torch gets one thread per core that the load average says is free
(at least one, at most :data:`MAX_AUTO_THREADS`): on a busy machine extra OpenMP threads wait for
cores that other processes hold, and every small op of the LM step gets several times slower.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llamavoice.errors import ConfigError

LM_PRECISIONS = ("fp32", "bf16", "fp16", "int8")
DECODER_PRECISIONS = ("fp32", "bf16")
_CHOICES = "auto, fp32, bf16, fp16, int8 or LM,DECODER (e.g. int8,bf16)"
_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
_TORCH = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}
# A batch-1 LM step is a few hundred small ops; beyond a few threads OpenMP hand-offs cost more than
# they save. (Measured only up to 2 cores here: the cap is a guess, not a measurement.)
MAX_AUTO_THREADS = 4

# The transformer stacks of LatentLM (and its alignment block, where present): their linear layers
# are nearly all the LM's weights. The input layers, prenet and heads stay fp32.
_LM_QUANTIZED_PARTS = ("decoder", "decoder_upper", "alignment")


@dataclass(frozen=True)
class Precision:
    """Precision of the LM's transformer and of the VAE decoder's backbone."""

    lm: str  # one of LM_PRECISIONS
    decoder: str  # one of DECODER_PRECISIONS

    @property
    def lm_dtype(self) -> torch.dtype:
        """The LM's floating-point dtype (int8: fp32 activations around int8 weights)."""
        return FLOAT_DTYPES[self.lm]

    def __str__(self) -> str:
        return self.lm if self.lm == self.decoder else f"{self.lm},{self.decoder}"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products in hardware (x86 AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # not Linux: assume no (bf16 would be emulated and slow)
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def int8_available() -> bool:
    """Whether torch's int8-weight matrix product (``aten._weight_int8pack_mm``) exists here and
    computes what it should on a probe (it is a private op: checked rather than trusted)."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return False
    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(40, 24)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(24, 40, generator=gen))
    x = torch.randn(3, 40, generator=gen)
    try:
        with torch.inference_mode():
            got, want = Int8Linear(layer)(x), layer(x)
    except RuntimeError:
        return False
    return bool(((got - want).abs().max() / want.abs().max()) < 0.05)


def _name(value: str | torch.dtype) -> str:
    if isinstance(value, torch.dtype):
        if value not in _TORCH:
            raise ConfigError(f"unsupported dtype {value}; use auto, fp32, bf16, fp16 or int8")
        return _TORCH[value]
    key = str(value).strip().lower()
    return _ALIASES.get(key, key)


def auto_precision(device: torch.device) -> Precision:
    """The measured-fastest precision per part for ``device``."""
    if device.type == "cpu":
        return Precision("int8" if int8_available() else "fp32", "bf16" if cpu_has_native_bf16() else "fp32")
    if device.type == "cuda":
        # Not measured in this project yet: bf16 (or fp16) halves the LM's weight traffic; the decoder stays fp32.
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", "fp32")
    return Precision("fp32", "fp32")


def resolve_precision(dtype: str | torch.dtype | Precision | None, device: torch.device) -> Precision:
    """``auto``/None, one precision for both parts (fp16 and int8 keep the decoder fp32), or ``LM,DECODER``."""
    if isinstance(dtype, Precision):
        lm, decoder = dtype.lm, dtype.decoder
    elif dtype is None or _name(dtype) == "auto":
        return auto_precision(device)
    else:
        parts = [_name(p) for p in _name(dtype).split(",")]
        if len(parts) > 2:
            raise ConfigError(f"unknown dtype {dtype!r}; use {_CHOICES}")
        lm = parts[0]
        # One name for both parts; a part that has no such precision (fp16, int8 decoder) stays fp32.
        decoder = parts[1] if len(parts) == 2 else (lm if lm in DECODER_PRECISIONS else "fp32")
    if lm not in LM_PRECISIONS:
        raise ConfigError(f"unknown dtype {lm!r}; use {_CHOICES}")
    if decoder not in DECODER_PRECISIONS:
        raise ConfigError(f"unknown decoder dtype {decoder!r}; use one of {', '.join(DECODER_PRECISIONS)}")
    if lm == "int8":
        if device.type != "cpu":
            raise ConfigError(f"int8 runs on the CPU only; on {device} use --dtype bf16, fp16 or auto")
        if not int8_available():
            raise ConfigError("this torch build has no working int8 matrix product; use --dtype fp32 or bf16")
    return Precision(lm, decoder)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights, one scale per output channel (symmetric; the scale is
    rounded to bf16 before quantizing, so dequantization is exact), multiplied in bf16 by
    ``aten._weight_int8pack_mm``; input and output keep the caller's dtype (fp32 around the LM's
    residual stream). Each output row depends on its own input row only, so batched rows compute
    exactly what they compute alone. Inference only."""

    # The kernel needs the input width to be a multiple of 16 (other widths crash or give wrong
    # results): narrower weights are zero-padded, and so is each input.
    _ALIGN = 16

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1).clamp_min(1e-12) / 127).to(torch.bfloat16)
        q = (w / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.pad = (-self.in_features) % self._ALIGN
        self.register_buffer("qweight", F.pad(q, (0, self.pad)).contiguous())
        self.register_buffer("scales", scales)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        h = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.pad:
            h = F.pad(h, (0, self.pad))
        y = torch.ops.aten._weight_int8pack_mm(h, self.qweight, self.scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def _quantize_linears(module: nn.Module) -> None:
    """Replace every nn.Linear inside ``module`` by an :class:`Int8Linear`, in place (the fp32
    weights are dropped)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _quantize_linears(child)


def has_int8_layers(module: nn.Module) -> bool:
    """Whether ``module`` contains int8 layers (made by :func:`apply_precision`)."""
    return any(isinstance(m, Int8Linear) for m in module.modules())


def apply_precision(model: nn.Module, precision: Precision) -> None:
    """Put a LlamaVoice model (already on its device, in fp32) in ``precision``, in place.

    Inference only: quantized layers cannot be trained. The VAE encoder, the flow and the ISTFT head
    stay fp32."""
    model.vae.float()
    model.flow.float()
    lm = model.lm
    if precision.lm == "int8":
        lm.float()
        for name in _LM_QUANTIZED_PARTS:
            part = getattr(lm, name, None)
            if part is not None:
                _quantize_linears(part)
    else:
        lm.to(precision.lm_dtype)
    decoder = model.vae.decoder
    if precision.decoder == "bf16":
        decoder.upsample.to(torch.bfloat16)
        decoder.backbone.to(torch.bfloat16)
    if precision != Precision("fp32", "fp32"):
        release_free_memory()


def release_free_memory() -> None:
    """Hand memory that was freed (the fp32 weights just converted) back to the OS. glibc keeps
    freed blocks for reuse, so without this the process stays as large as with the fp32 copy
    (measured: -52 MB resident for `small` in int8). A no-op where glibc is not the C library."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """One torch thread per core the 1-minute load average leaves free: at least 1, at most
    ``min(cores, MAX_AUTO_THREADS)``. ``cores`` defaults to :func:`available_cores`, ``load`` to
    ``os.getloadavg()[0]``."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # not available (Windows): assume idle
            load = 0.0
    free = math.floor(cores - load + 0.5)
    return max(1, min(cores, MAX_AUTO_THREADS, free))


def set_threads(threads: int | str | None) -> int:
    """Apply a thread setting: an int, ``"auto"`` (:func:`default_threads`) or None (leave torch's
    setting alone). Returns the number of threads torch now uses."""
    if threads is None:
        return torch.get_num_threads()
    if threads == "auto":
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1 or 'auto', got {threads!r}")
    torch.set_num_threads(threads)
    return threads


def available_cores() -> int:
    """OMP_NUM_THREADS when set (the user's own limit), else the CPUs this process may run on."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1

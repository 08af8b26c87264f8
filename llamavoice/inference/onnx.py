"""The LM step on ONNX Runtime: ``llamavoice export-onnx`` writes it, generation on the CPU uses it.

Why: one LM step for one new position is ~150 small operations. Eager torch pays Python and
dispatcher overhead on each; onnxruntime runs the same graph without it. Measured on this
project's CPU (docs/performance.md) the exported step with 8-bit weights is ~2x faster than the
torch step with int8 weights, and the step is most of the time of a sentence.

What is exported: :class:`StepGraph`, the arithmetic of ``LatentLM.step`` as a pure function
(the filled part of the key/value buffers in, this position's keys/values out), traced
with ``torch.onnx.export`` (dynamo) from the fp32 LM. Its weight matrix products are then quantized
to 8 bits (``MatMulNBits``, blocks of 32 input features, weights only: the rows of a batch never
share a scale, so batched rows still compute what they compute alone). The file,
``<model dir>/onnx/lm_step.onnx``, records the fingerprint of the weights it was made from.

At run time :class:`OnnxStep` steps the LM's own cache (:class:`~llamavoice.models.kv_cache.KVCache`,
torch buffers) like ``LatentLM.step``, so generation, streaming and the server's continuous
batching use it unchanged; the prefill, sampling, flow and VAE stay in torch. A generator checks
it against ``LatentLM.step`` before using it.

Export needs ``pip install "llamavoice[onnx]"`` (onnx, onnxscript); running it needs only onnxruntime.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from llamavoice.errors import CheckpointError, ConfigError
from llamavoice.inference.generator import ALIGN_WINDOW
from llamavoice.inference.runtime import Precision
from llamavoice.models.kv_cache import KVCache, TextKeys

ONNX_DIR = "onnx"
STEP_FILE = "lm_step.onnx"
FORMAT = "2"  # bump when the graph's inputs or outputs change
_META_FINGERPRINT = "llamavoice_model_id"
_META_FORMAT = "llamavoice_step_format"


def step_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / ONNX_DIR / STEP_FILE


def lm_fingerprint(lm: nn.Module) -> str:
    """A short hash of the LM's weights (call it on the fp32 LM, before any conversion)."""
    h = hashlib.sha256()
    for name, tensor in sorted(lm.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def find_step(model_dir: Path | None, lm: nn.Module, precision: Precision, device: torch.device,
              use: bool | None) -> tuple[Path, str] | None:
    """(file, fingerprint of the fp32 ``lm``) when generation should run the exported step: ``use``
    True requires it, None takes it when the model directory has one and the LM runs int8 on the
    CPU, False never. Call before the LM is converted (the fingerprint hashes its fp32 weights)."""
    if use is False:
        return None
    path = step_path(model_dir) if model_dir is not None else None
    problem = None
    if path is None or not path.is_file():
        problem = f"no exported LM step in {model_dir}: run `llamavoice export-onnx --model {model_dir}` first"
    elif precision.lm != "int8" or device.type != "cpu":
        problem = "the exported LM step runs with int8 weights on the CPU (--dtype auto or int8, --device cpu)"
    elif importlib.util.find_spec("onnxruntime") is None:
        problem = 'the exported LM step needs onnxruntime: pip install "llamavoice[onnx]"'
    if problem is not None:
        if use:
            raise ConfigError(problem)
        return None
    return path, lm_fingerprint(lm)


def load_step_decoder(found: tuple[Path, str] | None, required: bool) -> OnnxStep | None:
    """The ONNX Runtime decoder for ``found`` (see :func:`find_step`); a stale or unreadable file is an
    error when ``required``, else a warning and None (generation then runs in torch)."""
    if found is None:
        return None
    try:
        return OnnxStep(*found)
    except CheckpointError as exc:
        if required:
            raise
        warnings.warn(f"{exc}; decoding with torch meanwhile", stacklevel=3)
        return None


class StepGraph(nn.Module):
    """``LatentLM.step`` as a pure function, for export.

    Inputs: ``group`` (B, r, D), ``position`` (B,) each row's position, ``mask`` (B, 1, 1, P + 1)
    the attendable slots (the new one included), then with an alignment block its text keys,
    values (B, heads, L, d), mask (B, L), query step and text position (B,) (the monotonic
    window's state), then for every layer the past keys (rotated) and values (B, kv_heads, P, d).
    Outputs: the hidden state (B, dim), with an alignment block the advanced query step and text
    position, then for every layer the new position's rotated key and value (B, kv_heads, 1, d).
    The alignment window (``alignment.window``) is fixed in the graph when it is exported, and the
    attention is written out (``lm.attention = "math"``)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, group: Tensor, position: Tensor, mask: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        text = None
        if self.lm.alignment is not None:
            text, tensors = TextKeys(*tensors[:5]), tensors[5:]
        new: list[Tensor] = []

        def store(layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            new.extend((k, v))
            return torch.cat([tensors[2 * layer], k], dim=2), torch.cat([tensors[2 * layer + 1], v], dim=2)

        hidden = self.lm.step_hidden(group, position[:, None], mask, text, store)
        window = [text.next_query, text.position] if text is not None else []
        return (hidden, *window, *new)


def _example_inputs(lm: nn.Module) -> tuple[Tensor, ...]:
    """Inputs of a batch of 2, 5 past positions and 3 text tokens (sizes > 1, so none is fixed)."""
    B, P, L = 2, 5, 3
    group = torch.randn(B, lm.r, lm.latent_dim)
    tensors: list[Tensor] = [group, torch.tensor([5, 3]), torch.ones(B, 1, 1, P + 1, dtype=torch.bool)]
    if lm.alignment is not None:
        heads, dim_head = lm.alignment.heads, lm.alignment.dim_head
        tensors += [torch.randn(B, heads, L, dim_head), torch.randn(B, heads, L, dim_head),
                    torch.ones(B, L, dtype=torch.bool), torch.tensor([4, 2]), torch.tensor([1, 0])]
    for _ in range(lm.cfg.depth):
        tensors += [torch.randn(B, lm.kv_heads, P, lm.dim_head) for _ in range(2)]
    return tuple(tensors)


def _quiet_export():
    """The exporter prints its progress and the quantizer logs every node: keep output to one line."""
    for name in ("onnxruntime.quantization", "onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
    return stack


def export_fp32_step(model: nn.Module, path: str | Path) -> Path:
    """Export the LM step of a LlamaVoice model as a fp32 ONNX graph (:class:`StepGraph`)."""
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError as exc:
        raise ConfigError('exporting needs onnx and onnxscript: pip install "llamavoice[onnx]"') from exc
    lm = copy.deepcopy(model.lm).float().eval()
    lm.attention = "math"
    if lm.alignment is not None:
        lm.alignment.window = ALIGN_WINDOW  # what generation uses (the window is part of the graph)
    graph = StepGraph(lm).eval()
    example = _example_inputs(lm)
    batch, past = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("past", min=1, max=1 << 20)
    shapes: list = [{0: batch}, {0: batch}, {0: batch, 3: past + 1}]
    n_text = 5 if lm.alignment is not None else 0
    if n_text:
        text = torch.export.Dim("text", min=1, max=1 << 16)
        shapes += [{0: batch, 2: text}, {0: batch, 2: text}, {0: batch, 1: text}, {0: batch}, {0: batch}]
    shapes += [{0: batch, 2: past}] * (len(example) - 3 - n_text)
    window = ["next_query", "text_position"] if n_text else []
    names = ["group", "position", "mask"] + (["text_keys", "text_values", "text_mask", *window] if n_text else [])
    names += [f"past_{kind}{i}" for i in range(lm.cfg.depth) for kind in ("k", "v")]
    outputs = ["hidden", *[f"new_{n}" for n in window]]
    outputs += [f"new_{kind}{i}" for i in range(lm.cfg.depth) for kind in ("k", "v")]
    with _quiet_export(), torch.no_grad():
        torch.onnx.export(graph, example, str(path), input_names=names, output_names=outputs,
                          dynamic_shapes=(shapes[0], shapes[1], shapes[2], tuple(shapes[3:])),
                          opset_version=18, dynamo=True, verbose=False)
    return Path(path)


def export_step(model: nn.Module, path: str | Path, fingerprint: str) -> Path:
    """Export the LM step of a fp32 LlamaVoice model to ``path`` with 8-bit weights."""
    try:
        import onnx
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    except ImportError as exc:
        raise ConfigError(f"exporting needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                          'pip install "llamavoice[onnx]"') from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = export_fp32_step(model, Path(tmp) / "step.onnx")
        with _quiet_export():
            quantizer = nbits.MatMulNBitsQuantizer(
                onnx.load(str(raw)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                algo_config=nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4,
                                                               bits=8))
            quantizer.process()
        proto = quantizer.model.model
    for key, value in ((_META_FINGERPRINT, fingerprint), (_META_FORMAT, FORMAT)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


class OnnxStep:
    """``LatentLM.step`` run by onnxruntime, on the same cache."""

    def __init__(self, path: str | Path, fingerprint: str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError('the ONNX step needs onnxruntime: pip install "llamavoice[onnx]"') from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"{path} is not a readable ONNX step ({exc}); run `llamavoice export-onnx` "
                                  "again") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(_META_FORMAT) != FORMAT or meta.get(_META_FINGERPRINT) != fingerprint:
            raise CheckpointError(f"{path} was exported from other weights or by another llamavoice version; "
                                  "run `llamavoice export-onnx` again")
        self.input_names = [i.name for i in self.session.get_inputs()]

    def step(self, group: Tensor, cache: KVCache) -> Tensor:
        p = cache.length
        position = cache.positions(1)[:, 0].to(torch.int64)
        feeds: list[Tensor] = [group.float(), position, cache.valid[:, None, None, : p + 1]]
        text = cache.text
        if text is not None:
            feeds += [text.keys.float(), text.values.float(), text.mask, text.next_query, text.position]
        for k, v in zip(cache.keys, cache.values, strict=True):
            feeds += [k[:, :, :p], v[:, :, :p]]
        arrays = {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(self.input_names, feeds,
                                                                                         strict=True)}
        hidden, *new = self.session.run(None, arrays)
        if text is not None:  # the alignment block's query step and monotonic text position advance
            text.next_query, text.position = torch.from_numpy(new[0]), torch.from_numpy(new[1])
            new = new[2:]
        for i in range(len(cache.keys)):
            cache.store(i, torch.from_numpy(new[2 * i]).to(cache.keys[i].dtype),
                        torch.from_numpy(new[2 * i + 1]).to(cache.values[i].dtype))
        cache.advance(1)
        return torch.from_numpy(hidden)

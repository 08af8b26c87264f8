#!/usr/bin/env python
"""The speed levers of docs/performance.md one by one, on the two parts that do the work.

    python benchmarks/bench_levers.py decoder            # VAE decoder: fp32 / bf16 / ONNX Runtime, per second of audio
    python benchmarks/bench_levers.py decoder --compile  # ... and torch.compile (slow to warm up)
    python benchmarks/bench_levers.py step               # one LM step: fp32 / bf16 / int8 kinds / ONNX Runtime

``decoder`` splits the VAE decoder into its Vocos backbone (upsampling conv, ConvNeXt blocks) and its
ISTFT head (a linear layer and the inverse STFT) and times each per second of audio, with the
difference of each variant's waveform from fp32 (SNR, dB). The ONNX variants export the backbone
and the head's linear layer (the ISTFT itself has no ONNX export) and run them in onnxruntime.

``step`` times one cached LM step (batch 1, ~200 cached positions) for each way of running it,
with its hidden state's difference from fp32 (relative) and whether the rows of a batch influence
each other (the largest difference between a row computed in a batch of 3 and alone). torch.ao's
dynamic int8 and onnxruntime's dynamic int8 quantize activations with one scale per call, so rows
share a scale; int8 weights (``Int8Linear``, ``MatMulNBits``) do not.

Random weights by default (``--model DIR`` for a trained model); the variants alternate and the
medians of CPU time (``time.process_time``, the process's own work, robust to other load) are printed.
ONNX variants need the onnx extra.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated")
warnings.filterwarnings("ignore", category=DeprecationWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def cpu_ms(fn, repeats: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(repeats):
        fn()
    return 1000 * (time.process_time() - t) / repeats


def alternate(variants: dict, rounds: int, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(cpu_ms(fn, repeats))
    return {name: statistics.median(v) for name, v in times.items()}


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_model(args: argparse.Namespace):
    from llamavoice.config import preset
    from llamavoice.models.llamavoice import LlamaVoice

    if args.model:
        return LlamaVoice.from_pretrained(args.model)
    torch.manual_seed(0)
    cfg = preset("small")
    cfg.lm.reduction_factor = args.reduction_factor
    return LlamaVoice(cfg).eval()


# --- decoder -------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """Latents → the ISTFT head's input spectrum (everything but the inverse STFT)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.d = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.d.upsample(z.transpose(1, 2).to(self.d.upsample.weight.dtype))
        x = rearrange(x, "b (c r) t -> b c (t r)", r=self.d.unfold)
        return self.d.head.out(self.d.backbone(x).float())


def istft(decoder: nn.Module, spec: torch.Tensor) -> torch.Tensor:
    """The rest of vocos' ISTFTHead.forward after its linear layer."""
    mag, phase = spec.transpose(1, 2).chunk(2, dim=1)
    mag = torch.clip(torch.exp(mag), max=1e2)
    return decoder.head.istft(mag * (torch.cos(phase) + 1j * torch.sin(phase)))


def bench_decoder(args: argparse.Namespace) -> None:
    from llamavoice.inference.runtime import Precision, apply_precision

    model = load_model(args)
    fp32 = model.vae.decoder
    bf16_model = copy.deepcopy(model)
    apply_precision(bf16_model, Precision("fp32", "bf16"))
    z = torch.randn(1, int(args.seconds * model.config.audio.latent_rate), model.config.vae.latent_dim)
    seconds = z.shape[1] / model.config.audio.latent_rate
    bodies = {"torch fp32": Backbone(fp32), "torch bf16": Backbone(bf16_model.vae.decoder)}
    if args.compile:
        compiled = torch.compile(Backbone(copy.deepcopy(fp32)), dynamic=True)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(z)
        print(f"torch.compile warm-up: {time.perf_counter() - t:.0f} s")
        bodies["torch fp32 compiled"] = compiled
    tmp = Path(tempfile.mkdtemp())
    if HAVE_ONNX:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        torch.onnx.export(Backbone(fp32).eval(), (z,), str(tmp / "body.onnx"), input_names=["z"],
                          output_names=["spec"], dynamic_axes={"z": {1: "t"}, "spec": {1: "frames"}},
                          opset_version=17, dynamo=False)
        quantize_dynamic(str(tmp / "body.onnx"), str(tmp / "body8.onnx"), weight_type=QuantType.QInt8)
        for name, file in (("onnxruntime fp32", "body.onnx"), ("onnxruntime int8 (dynamic)", "body8.onnx")):
            session = ort_session(tmp / file)
            bodies[name] = lambda z, s=session: torch.from_numpy(s.run(None, {"z": z.numpy()})[0])
    with torch.inference_mode():
        ref_spec = bodies["torch fp32"](z)
        ref = istft(fp32, ref_spec)
        head_ms = alternate({"istft": lambda: istft(fp32, ref_spec)}, args.rounds, args.repeats)["istft"]
        body_ms = alternate({name: (lambda f=f: f(z)) for name, f in bodies.items()}, args.rounds, args.repeats)
        print(f"\nVAE decoder, {seconds:.1f} s of audio; CPU ms per second of audio; threads {torch.get_num_threads()}")
        print(f"{'variant':<30}{'backbone+linear':>16}{'istft':>8}{'total':>8}{'SNR dB':>9}")
        for name, ms in body_ms.items():
            wav = istft(fp32, bodies[name](z).float())
            snr = 10 * torch.log10(ref.pow(2).sum() / (wav - ref).pow(2).sum().clamp_min(1e-30)).clamp(max=99.9)
            print(f"{name:<30}{ms / seconds:>16.1f}{head_ms / seconds:>8.1f}{(ms + head_ms) / seconds:>8.1f}"
                  f"{float(snr):>9.1f}")


# --- LM step ---------------------------------------------------------------------------------------
class TorchStep:
    """The LM's own step (what generation runs), on a cache filled from the feeds."""

    def __init__(self, lm: nn.Module):
        self.lm = lm
        self.caches: dict[int, object] = {}

    def _cache(self, feeds: list[torch.Tensor]):
        from llamavoice.models.kv_cache import KVCache, TextKeys

        key = id(feeds)
        if key not in self.caches:
            dtype = self.lm.latent_in.weight.dtype
            B, past = feeds[0].shape[0], feeds[2].shape[-1] - 1
            text, kv = None, feeds[3:]
            if self.lm.alignment is not None:
                text, kv = TextKeys(feeds[3].to(dtype), feeds[4].to(dtype), *feeds[5:8]), feeds[8:]
            pad = lambda t: torch.cat([t.to(dtype), torch.zeros_like(t[:, :, :1], dtype=dtype)], dim=2)  # noqa: E731
            self.caches[key] = KVCache([pad(k) for k in kv[0::2]], [pad(v) for v in kv[1::2]],
                                       torch.ones(B, past + 1, dtype=torch.bool), torch.zeros(B, dtype=torch.long),
                                       past, text)
        return self.caches[key]

    def __call__(self, feeds: list[torch.Tensor]) -> torch.Tensor:
        cache = self._cache(feeds)
        cache.length = feeds[2].shape[-1] - 1  # rewrite the same slot every call
        if cache.text is not None:  # ... as the same query step and text position
            cache.text.next_query, cache.text.position = feeds[6], feeds[7]
        return self.lm.step(feeds[0].to(self.lm.latent_in.weight.dtype), cache).float()


class OrtStep:
    """An exported StepGraph run directly (batch-coupling check and timing)."""

    def __init__(self, path: Path):
        self.session = ort_session(path)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: list[torch.Tensor]) -> torch.Tensor:
        return torch.from_numpy(self.session.run(
            ["hidden"], {n: np.ascontiguousarray(t.numpy()) for n, t in zip(self.names, feeds, strict=True)})[0])


def step_inputs(lm: nn.Module, B: int, past: int, seed: int = 0) -> list[torch.Tensor]:
    """The exported step's inputs (inference/onnx.py StepGraph), random."""
    gen = torch.Generator().manual_seed(seed)
    feeds = [torch.randn(B, lm.r, lm.latent_dim, generator=gen), torch.full((B,), past),
             torch.ones(B, 1, 1, past + 1, dtype=torch.bool)]
    if lm.alignment is not None:
        a = lm.alignment
        feeds += [torch.randn(B, a.heads, 20, a.dim_head, generator=gen),
                  torch.randn(B, a.heads, 20, a.dim_head, generator=gen), torch.ones(B, 20, dtype=torch.bool),
                  torch.full((B,), past), torch.zeros(B, dtype=torch.long)]
    for _ in range(lm.cfg.depth):
        feeds += [torch.randn(B, lm.kv_heads, past, lm.dim_head, generator=gen) for _ in range(2)]
    return feeds


def bench_step(args: argparse.Namespace) -> None:
    from llamavoice.inference.runtime import _quantize_linears

    model = load_model(args)
    lm32 = model.lm.float().eval()
    variants: dict[str, object] = {"torch fp32": TorchStep(lm32)}
    variants["torch bf16"] = TorchStep(copy.deepcopy(lm32).to(torch.bfloat16))
    int8 = copy.deepcopy(lm32)
    for part in ("decoder", "decoder_upper", "alignment"):
        if getattr(int8, part, None) is not None:
            _quantize_linears(getattr(int8, part))
    variants["torch int8 weights (Int8Linear)"] = TorchStep(int8)
    ao = copy.deepcopy(lm32)
    for part in ("decoder", "decoder_upper", "alignment"):
        if getattr(ao, part, None) is not None:
            torch.ao.quantization.quantize_dynamic(getattr(ao, part), {nn.Linear}, dtype=torch.qint8, inplace=True)
    variants["torch.ao dynamic int8"] = TorchStep(ao)
    if HAVE_ONNX:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        from llamavoice.inference.onnx import _quiet_export, export_fp32_step

        tmp = Path(tempfile.mkdtemp())
        raw = export_fp32_step(model, tmp / "step.onnx")
        with _quiet_export():
            q = nbits.MatMulNBitsQuantizer(onnx.load(str(raw)), bits=8, block_size=32, is_symmetric=True,
                                           accuracy_level=4, algo_config=nbits.DefaultWeightOnlyQuantConfig(
                                               block_size=32, is_symmetric=True, accuracy_level=4, bits=8))
            q.process()
            q.model.save_model_to_file(str(tmp / "nbits.onnx"), use_external_data_format=False)
            quantize_dynamic(str(raw), str(tmp / "dyn.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        variants["onnxruntime fp32"] = OrtStep(raw)
        variants["onnxruntime 8-bit weights (MatMulNBits)"] = OrtStep(tmp / "nbits.onnx")
        variants["onnxruntime dynamic int8"] = OrtStep(tmp / "dyn.onnx")
    one = step_inputs(lm32, 1, args.past)
    three = step_inputs(lm32, 3, args.past, seed=1)
    singles = [[f[i : i + 1] for f in three] for i in range(3)]

    def run(v, feeds):
        return v(feeds).float()

    with torch.inference_mode():
        ref = run(variants["torch fp32"], one)
        ms = alternate({name: (lambda v=v: run(v, one)) for name, v in variants.items()}, args.rounds, args.repeats)
        print(f"\nLM step, batch 1, {args.past} cached positions, r={lm32.r}; CPU ms per step; threads "
              f"{torch.get_num_threads()}")
        print(f"{'variant':<42}{'ms':>7}{'rel. diff':>11}{'batch coupling':>16}")
        for name, v in variants.items():
            err = float((run(v, one) - ref).norm() / ref.norm())
            batched = run(v, three)
            alone = torch.cat([run(v, single) for single in singles])
            coupling = float((batched - alone).abs().max())
            print(f"{name:<42}{ms[name]:>7.2f}{err:>11.4f}{coupling:>16.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("decoder", "step"))
    parser.add_argument("--model", type=Path, default=None, help="A trained model directory (default: random).")
    parser.add_argument("--reduction-factor", type=int, default=2, help="For the random model.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="Audio decoded per call (decoder).")
    parser.add_argument("--past", type=int, default=200, help="Cached positions (step).")
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile (decoder).")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.repeats is None:
        args.repeats = 3 if args.part == "decoder" else 30
    if not HAVE_ONNX:
        print('(onnx variants skipped: pip install "llamavoice[onnx]")')
    (bench_decoder if args.part == "decoder" else bench_step)(args)


if __name__ == "__main__":
    main()

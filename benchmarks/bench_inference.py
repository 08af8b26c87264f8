#!/usr/bin/env python
"""Inference speed: real-time factor, time to first audio, steps/s, and loop overhead.

    python benchmarks/bench_inference.py                       # `small` preset, random weights, CPU fp32
    python benchmarks/bench_inference.py --compile             # the same with torch.compile'd step/sampler
    python benchmarks/bench_inference.py --model DIR --device cuda --dtype bf16

Speed does not depend on training, so without --model the `small` preset is built with random
weights (and a small tokenizer). Generation is forced to a fixed length (the stop head is ignored)
so runs are comparable. In the same process it also times the bare x-transformers Decoder step
with a KV cache over the same prefix length: the ratio "loop step / bare step" is the cost of
the loop (the LM's own cached step, heads, sampling, stop/stall bookkeeping, Python) relative to
x-transformers' general cached forward of the transformer alone.
Measurements alternate between the variants and report medians, because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
warnings.filterwarnings("ignore", message=r".*weight_norm.*deprecated")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TEXT = "The birch canoe slid on the smooth planks, and the boy glued the sheet to the dark blue background."
CORPUS = [
    TEXT,
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls. The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us. A large size in stockings is hard to sell.",
]


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A harmonic signal with a wobbling pitch: stands in for a voice clip."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    return (0.3 * wave / np.abs(wave).max() + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def build(args: argparse.Namespace):
    """(TTS, the LM's parameter count before any int8 conversion)."""
    from llamavoice.inference.api import TTS
    from llamavoice.models.llamavoice import LlamaVoice

    if args.model:
        model = LlamaVoice.from_pretrained(args.model)
    else:
        from llamavoice.config import preset
        from llamavoice.text.tokenizer import TextTokenizer

        torch.manual_seed(0)
        cfg = preset(args.preset)
        tokenizer = TextTokenizer.train(CORPUS * 4, vocab_size=cfg.text.vocab_size)
        model = LlamaVoice(cfg, tokenizer)
    lm_parameters = sum(p.numel() for p in model.lm.parameters())
    tts = TTS(model, model_dir=args.model, device=args.device, dtype=args.dtype, compile=args.compile,
              attention=args.attention)
    return tts, lm_parameters


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(tts, generator, item, cfg) -> tuple[float, float, int]:
    """(prefill + first step seconds, mean seconds per later step, steps) of the generation loop."""
    device = tts.device
    sync(device)
    start = time.perf_counter()
    first = None
    steps = 0
    for _group, _state in generator.steps([item], cfg):
        steps += 1
        if first is None:
            sync(device)
            first = time.perf_counter()
    sync(device)
    end = time.perf_counter()
    return first - start, (end - first) / max(1, steps - 1), steps


def time_bare(tts, prefix: int, steps: int, batch: int) -> float:
    """Mean seconds of one bare x-transformers Decoder step with a KV cache (same prefix length)."""
    lm = tts.model.lm
    dtype = lm.latent_in.weight.dtype
    with torch.inference_mode():
        x = torch.randn(batch, prefix, lm.cfg.dim, device=tts.device, dtype=dtype)
        _, cache = lm.decoder(x, return_hiddens=True)
        new = torch.randn(batch, 1, lm.cfg.dim, device=tts.device, dtype=dtype)
        sync(tts.device)
        start = time.perf_counter()
        for _ in range(steps):
            _, cache = lm.decoder(new, cache=cache, return_hiddens=True, input_not_include_cache=True)
        sync(tts.device)
        return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Model directory (default: random `--preset`).")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", help="auto, fp32, bf16, fp16, int8 or LM,DECODER.")
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--seconds", type=float, default=5.0, help="Audio generated per run.")
    parser.add_argument("--prompt-seconds", type=float, default=6.0)
    parser.add_argument("--cfg-weight", type=float, default=0.0)
    parser.add_argument("--chunk-frames", type=int, default=4, help="Streaming chunk (latent frames).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from llamavoice.inference.generator import GenerationItem

    t0 = time.perf_counter()
    tts, lm_parameters = build(args)
    load_s = time.perf_counter() - t0
    sr = tts.sample_rate
    voice = tts.encode_voice(speech_like(args.prompt_seconds, sr), sample_rate=sr)
    # Fixed length: the stop head never fires (threshold > 1), max_seconds caps the run.
    cfg = tts.sampling.replace(stop_threshold=2.0, max_seconds=args.seconds, cfg_weight=args.cfg_weight, seed=1)
    chunk = tts._chunks(TEXT, cfg.max_chars)[0]
    lo, hi = cfg.frame_limits(chunk.chars, tts.frame_rate)
    item = GenerationItem(chunk.ids, voice.on(tts.device), 1, lo, hi)
    item_with_store = GenerationItem(chunk.ids, voice.on(tts.device), 1, lo, hi, prefix_store=voice.prefixes)
    prefix_len = len(chunk.ids) + 1 + voice.num_frames // tts.model.lm.r + 1
    batch = 2 if args.cfg_weight else 1

    t0 = time.perf_counter()
    tts.synthesize(TEXT, voice, sampling=cfg)  # warm-up (and compilation with --compile)
    next(iter(tts.stream(TEXT, voice, sampling=cfg, chunk_frames=args.chunk_frames)))
    warmup_s = time.perf_counter() - t0

    keys = ("bare_ms", "loop_ms", "prefill_ms", "prefill_text_ms", "rtf", "ttfa_ms", "stream_rtf")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    audio_s = 0.0
    for _ in range(args.repeats):
        _, per_step, steps = time_loop(tts, tts.generator, item, cfg)
        rows["bare_ms"].append(1000 * time_bare(tts, prefix_len, steps, batch))
        with torch.inference_mode():
            inputs = tts.generator._inputs([item], args.cfg_weight != 0.0)
            t = time.perf_counter()
            tts.model.lm.prefill(*inputs, room=steps)
            sync(tts.device)
            rows["prefill_ms"].append(1000 * (time.perf_counter() - t))
            # With the voice's [prompt][SEP] prefix cached (what a reused voice gets, unguided).
            voice_prefix = tts.generator._prefix(item_with_store)
            t = time.perf_counter()
            tts.model.lm.prefill_text(inputs[0][:1], voice_prefix, room=steps)
            sync(tts.device)
            rows["prefill_text_ms"].append(1000 * (time.perf_counter() - t))
        rows["loop_ms"].append(1000 * per_step)
        t = time.perf_counter()
        audio, _ = tts.synthesize(TEXT, voice, sampling=cfg)
        elapsed = time.perf_counter() - t
        audio_s = audio.shape[0] / sr
        rows["rtf"].append(elapsed / audio_s)
        t = time.perf_counter()
        stream = tts.stream(TEXT, voice, sampling=cfg, chunk_frames=args.chunk_frames)
        samples = next(stream).shape[0]
        rows["ttfa_ms"].append(1000 * (time.perf_counter() - t))
        samples += sum(chunk.shape[0] for chunk in stream)
        rows["stream_rtf"].append((time.perf_counter() - t) / (samples / sr))

    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "model": str(args.model) if args.model else f"{args.preset} (random weights)",
        "device": str(tts.device), "dtype": args.dtype, "compile": args.compile, "attention": args.attention,
        "threads": torch.get_num_threads(), "cfg_weight": args.cfg_weight,
        "lm_parameters_M": round(lm_parameters / 1e6, 2),
        "audio_seconds": round(audio_s, 2), "steps": steps, "prompt_frames": voice.num_frames,
        "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2),
        "rtf": round(med["rtf"], 3), "ttfa_ms": round(med["ttfa_ms"], 1), "stream_rtf": round(med["stream_rtf"], 3),
        "steps_per_s": round(1000 / med["loop_ms"], 1), "loop_step_ms": round(med["loop_ms"], 2),
        "bare_step_ms": round(med["bare_ms"], 2), "loop_over_bare": round(med["loop_ms"] / med["bare_ms"], 3),
        "prefill_ms": round(med["prefill_ms"], 1), "prefill_text_ms": round(med["prefill_text_ms"], 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Training throughput of each stage: latent frames/s, utterances/s, audio seconds/s, peak memory.

Each stage runs in its own process (so peak RSS is that stage's), on batches shaped like a real run's:
``--frame-budget`` seconds of audio per batch, made of utterances of ``--utt-seconds`` (synthetic voiced
audio; or real ones with ``--manifest``). The step is the real one (``Stage.train_step``: forward,
backward, clipping, optimizer), timed after ``--warmup`` steps.

    python benchmarks/bench_training.py --config recipes/configs/small-cpu.yaml
    python benchmarks/bench_training.py --config recipes/configs/small-gpu.yaml --stages vae,lm   # on a GPU

"frames" are 25 Hz latent frames of the audio a step trains on: the 1 s crops in the VAE/GAN part
of stages vae (and joint), the whole utterances in stages lm and joint.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    # name: (stage, discriminators on)
    "vae-mel": ("vae", False),  # before disc_start_step: mel + KL only
    "vae-gan": ("vae", True),
    "lm": ("lm", False),
    "joint": ("joint", True),
}


def synthetic_batch(model, count: int, seconds: float, seed: int):
    import numpy as np
    import torch

    from llamavoice.data.dataset import collate

    sr = model.sample_rate
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jumbo plums".split()
    items = []
    for _ in range(count):
        n = int(seconds * sr)
        t = np.arange(n) / sr
        f0 = rng.uniform(90, 220) * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        wav = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
        wav = (0.3 * wav / np.abs(wav).max() + 0.01 * rng.standard_normal(n)).astype(np.float32)
        text = " ".join(rng.choice(words, size=int(seconds * 2.5)))  # ~2.5 words per second
        items.append({"text": torch.tensor(model.tokenizer.encode(text)), "audio": torch.from_numpy(wav),
                      "prompt_audio": torch.from_numpy(wav[: int(min(seconds, 3.0) * sr)].copy())})
    return collate(items)


def manifest_batches(model, manifest: str, budget: float, seed: int, count: int):
    from llamavoice.data.dataset import TTSDataset, collate
    from llamavoice.data.manifest import read_manifest
    from llamavoice.data.sampler import DurationBatchSampler

    entries = read_manifest(manifest)
    dataset = TTSDataset(entries, model.tokenizer, model.sample_rate, seed=seed)
    sampler = DurationBatchSampler(dataset.durations, budget, seed=seed)
    return [collate([dataset[i] for i in b]) for b, _ in zip(sampler, range(count), strict=False)]


def run_one(args: argparse.Namespace, variant: str) -> dict:
    import torch
    from accelerate import Accelerator

    from llamavoice.models.llamavoice import LlamaVoice
    from llamavoice.text.tokenizer import TextTokenizer
    from llamavoice.train.config import load_run_config
    from llamavoice.train.stages import build_stage

    if args.threads:
        torch.set_num_threads(args.threads)
    stage_name, gan = VARIANTS[variant]
    run = load_run_config(args.config, ["train.train_manifest=unused", f"train.stage={stage_name}",
                                        f"train.disc_start_step={0 if gan else 10**9}", *args.set])
    cfg = run.train
    torch.manual_seed(0)
    tokenizer = TextTokenizer.train(["the quick brown fox jumps over a lazy dog"] * 20, 300)
    model = LlamaVoice(run.model, tokenizer)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    stage = build_stage(model, cfg, accelerator)
    if cfg.compile:
        for module in (model.lm, model.vae.encoder, model.vae.decoder.backbone):
            module.compile(dynamic=True)
    stage.prepare()
    stage.train()
    steps = args.warmup + args.steps
    if args.manifest:
        batches = manifest_batches(model, args.manifest, cfg.frame_budget_seconds, cfg.seed, steps)
    else:
        per_batch = max(1, int(cfg.frame_budget_seconds // args.utt_seconds))
        batches = [synthetic_batch(model, per_batch, args.utt_seconds, seed=i) for i in range(steps)]
    device = accelerator.device
    frames = utts = audio_s = 0.0
    elapsed = 0.0
    step_times = []
    spl = run.model.audio.samples_per_latent
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = stage.train_step([batch], step=10**9 if gan else 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"step {i}: {dt:.2f} s ({result.frames} frames)", file=sys.stderr, flush=True)
        if i >= args.warmup:
            step_times.append(dt)
            elapsed += dt
            frames += result.frames
            utts += result.utterances
            audio_s += result.frames * spl / model.sample_rate
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB (Linux)
    out = {
        "variant": variant, "device": str(device), "precision": cfg.mixed_precision, "threads": torch.get_num_threads(),
        "batch_utts": batches[0].audio.shape[0],
        "batch_audio_s": float(batches[0].audio_lengths.sum()) / model.sample_rate,
        "s_per_step": elapsed / args.steps, "median_s_per_step": sorted(step_times)[len(step_times) // 2],
        "frames_per_s": frames / elapsed, "utts_per_s": utts / elapsed,
        "audio_s_per_s": audio_s / elapsed, "peak_rss_mib": peak_rss,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes/configs/small-cpu.yaml"))
    parser.add_argument("--stages", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per stage")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (allocator/oneDNN warm-up)")
    parser.add_argument("--utt-seconds", type=float, default=4.0, help="synthetic utterance length")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's). On a CPU shared with other jobs, 1 thread can be "
                             "several times faster than 2: busy-waiting OpenMP threads stall when descheduled")
    parser.add_argument("--manifest", default=None, help="use real utterances from this manifest")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.grad_accum=2")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: run one variant
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args, args.one)), flush=True)
        return
    rows = []
    for variant in args.stages.split(","):
        cmd = [sys.executable, __file__, "--one", variant] + [a for a in sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{variant}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        r = rows[-1]
        print(f"{variant:8s} {r['s_per_step']:7.2f} s/step (median {r['median_s_per_step']:.2f})  "
              f"{r['frames_per_s']:8.1f} frames/s  "
              f"{r['utts_per_s']:6.2f} utt/s  {r['audio_s_per_s']:6.2f} audio-s/s  peak RSS {r['peak_rss_mib']:.0f} MiB"
              + (f"  peak GPU {r['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in r else ""), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

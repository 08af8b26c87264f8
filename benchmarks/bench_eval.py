#!/usr/bin/env python
"""Speed benchmark: real-time factor and time-to-first-audio (p50/p95) of TTS systems.

    python benchmarks/bench_eval.py --piper --n 20
    python benchmarks/bench_eval.py --model-dir runs/small-lm/final --prompt voice.wav --device cuda

Only synthesis is timed (no ASR/speaker/MOS models are loaded): the harness with ``metrics=speed``.
Sentences come from ``--eval-list`` or a built-in set of varied lengths. Each system is warmed up
once before timing. The figures belong to the machine they were measured on (printed with them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

SENTENCES = [
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "On the fourteenth of March, two thousand and twenty-four, the train left at seven thirty in the morning.",
    "Numbers like 3.14 and 1,024 are read out loud.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A journey of a thousand miles begins with a single step, but the first step is often the hardest one to take.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="RTF / time-to-first-audio benchmark")
    p.add_argument("--eval-list", type=Path, default=None)
    p.add_argument("--prompt", type=Path, default=None, help="voice prompt for the built-in sentences")
    p.add_argument("--model-dir", type=Path, action="append", default=[])
    p.add_argument("--piper", action="store_true")
    p.add_argument("--n", type=int, default=len(SENTENCES), help="number of sentences")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    args = p.parse_args(argv)

    from llamavoice.eval.harness import run_eval
    from llamavoice.eval.lists import EvalItem, load_eval_list
    from llamavoice.eval.report import device_info
    from llamavoice.eval.systems import LlamaVoiceSystem, PiperSystem

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.eval_list:
        items = load_eval_list(args.eval_list)[: args.n]
    else:
        items = [EvalItem(SENTENCES[i % len(SENTENCES)], args.prompt, None, "builtin", f"s{i:03d}")
                 for i in range(args.n)]
    systems = ([PiperSystem()] if args.piper else []) + [
        LlamaVoiceSystem(d, device=args.device) for d in args.model_dir]
    if not systems:
        p.error("give --piper and/or --model-dir")
    with tempfile.TemporaryDirectory() as tmp:
        result = run_eval(items, systems, args.out or tmp, metrics=["speed"], save_generated=False)
    print(json.dumps(device_info()))
    print("| system | n | audio s | RTF p50 | RTF p95 | TTFA p50 s | TTFA p95 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, s in result.summary.items():
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {name} | {s['n']} | {s['audio_s']:.1f} | {f(s['rtf_p50'])} | {f(s['rtf_p95'])} | "
              f"{f(s['ttfa_p50_s'])} | {f(s['ttfa_p95_s'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

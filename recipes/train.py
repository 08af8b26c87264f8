#!/usr/bin/env python
"""Train LlamaVoice: ``accelerate launch recipes/train.py --config recipes/configs/small-cpu.yaml``.

Works the same with plain ``python`` (one process: CPU or one GPU) and with ``accelerate launch``
(one process per GPU, DDP). Examples::

    python recipes/train.py --config recipes/configs/tiny.yaml --set train.stage=vae
    python recipes/train.py --config recipes/configs/small-cpu.yaml --run-dir runs/small-vae --resume
    python recipes/train.py --config recipes/configs/small-cpu.yaml --set train.stage=lm \\
        --set train.init_from=runs/small-vae/final --run-dir runs/small-lm

See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from llamavoice.errors import LlamaVoiceError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train one LlamaVoice stage (vae, lm or joint).")
    parser.add_argument("--config", required=True, help="run config YAML (model: + train: sections)")
    parser.add_argument("--run-dir", default=None, help="where checkpoints, logs and the export go "
                        "(default: runs/<config name>-<stage>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--halt-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from llamavoice.train.config import load_run_config
        from llamavoice.train.loop import train

        run = load_run_config(args.config, args.overrides)
        run_dir = Path(args.run_dir or f"runs/{Path(args.config).stem}-{run.train.stage}")
        summary = train(run, run_dir, resume=args.resume, halt_after=args.halt_after, progress=not args.no_progress)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["main_process"]:
        print(f"done: {summary['step']} steps ({summary['skipped_steps']} skipped); exported {summary['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

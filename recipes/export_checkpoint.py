#!/usr/bin/env python
"""Export a training checkpoint as a model directory (``save_pretrained``), EMA weights by default.

    python recipes/export_checkpoint.py runs/small-vae/checkpoints/step_00003000 runs/small-vae/export_3000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llamavoice.errors import LlamaVoiceError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a RUN/checkpoints/step_N directory")
    parser.add_argument("out", type=Path, help="model directory to write")
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even if the run kept an EMA")
    args = parser.parse_args(argv)
    try:
        from llamavoice.train.checkpoint import model_from_checkpoint

        model, which = model_from_checkpoint(args.checkpoint, use_ema=not args.no_ema)
        model.save_pretrained(args.out)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {args.out} ({which})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

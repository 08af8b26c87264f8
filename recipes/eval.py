#!/usr/bin/env python
"""Evaluate on the corpus' held-out sets: held-out sentences x held-out voices, plus ceilings and peers.

    python recipes/eval.py --corpus /work/corpus --model-dir runs/small-lm/final --teacher --piper
    python recipes/eval.py --eval-list my_list.jsonl --piper --max-items 20 --out runs/eval/piper

Builds ``eval_list.jsonl`` from the corpus manifests (``manifest_heldout_speakers.jsonl`` and
``manifest_heldout_sentences.jsonl``) into the run directory unless ``--eval-list`` is given, then
runs the same harness as ``llamavoice eval run``. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from llamavoice.errors import LlamaVoiceError  # noqa: E402

HELDOUT_MANIFESTS = ("manifest_heldout_speakers.jsonl", "manifest_heldout_sentences.jsonl")


def parse_sampling(text: str | None) -> dict:
    """``--sampling`` as SamplingConfig overrides, checked before any model loads."""
    if text is None:
        return {}
    from llamavoice.errors import ConfigError
    from llamavoice.inference.sampling import SamplingConfig

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--sampling is not JSON ({exc}); pass an object such as "
                          '\'{"temperature": 0.4, "cfg_weight": 2.0}\'') from exc
    return SamplingConfig.check_overrides(overrides, "--sampling", seed_from="use --seed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="corpus directory with the held-out manifests")
    src.add_argument("--eval-list", type=Path, help="an existing JSONL eval list")
    p.add_argument("--model-dir", type=Path, action="append", default=[], help="saved model (repeatable)")
    p.add_argument("--teacher", action="store_true", help="score the reference recordings (ceiling)")
    p.add_argument("--piper", action="store_true", help="score Piper's joe voice (peer)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/eval/TIMESTAMP)")
    p.add_argument("--max-items", type=int, default=None, help="items to use, spread over speakers")
    p.add_argument("--metrics", default="asr,sim,mos,speed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voice", default=None, help="speak every item with this voice of the model (e.g. default) "
                   "instead of cloning the item's prompt clip")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--clone-check", action="store_true",
                   help="cloning against the default voice: each --model-dir speaks the held-out speakers' items "
                   "twice, cloned from the prompt clip and in its voice 'default'; reports the share of items "
                   "where the clone is closer (SIM-o) to the speaker's reference clip")
    p.add_argument("--sampling", default=None, metavar="JSON",
                   help='sampling settings for every --model-dir over its own defaults, e.g. '
                   '\'{"temperature": 0.4, "cfg_weight": 2.0}\'')
    args = p.parse_args(argv)

    from llamavoice.eval.harness import default_run_dir, run_eval
    from llamavoice.eval.lists import eval_list_from_manifests, load_eval_list, one_per_sentence, save_eval_list
    from llamavoice.eval.report import markdown_table, paired_wins
    from llamavoice.eval.systems import LlamaVoiceSystem, PiperSystem, TeacherSystem

    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        out = args.out or default_run_dir()
        if args.corpus is not None:
            manifests = [args.corpus / m for m in HELDOUT_MANIFESTS if (args.corpus / m).is_file()]
            if not manifests:
                raise LlamaVoiceError(f"{args.corpus} has none of {', '.join(HELDOUT_MANIFESTS)}; build the corpus "
                                      "first (python -m recipes.data.build_corpus) or pass --eval-list")
            if args.clone_check:  # only speakers the model never heard
                manifests = [m for m in manifests if m.name == HELDOUT_MANIFESTS[0]]
                if not manifests:
                    raise LlamaVoiceError(f"--clone-check needs {args.corpus / HELDOUT_MANIFESTS[0]}")
            if args.voice:  # one voice speaks every item: read each distinct held-out sentence once
                sentences = args.corpus / HELDOUT_MANIFESTS[1]
                items = eval_list_from_manifests([sentences] if sentences.is_file() else manifests, seed=args.seed)
                items = one_per_sentence(items)[: args.max_items]
            else:
                items = eval_list_from_manifests(manifests, max_items=args.max_items, seed=args.seed)
            eval_list = save_eval_list(items, out / "eval_list.jsonl")
        else:
            eval_list = args.eval_list
            items = load_eval_list(eval_list)[: args.max_items]
        systems = ([TeacherSystem(items)] if args.teacher else []) + ([PiperSystem()] if args.piper else [])
        sampling = parse_sampling(args.sampling)
        metrics = [m for m in args.metrics.split(",") if m]
        pairs = []  # (clone, default voice) system names for --clone-check
        for d in args.model_dir:
            systems.append(LlamaVoiceSystem(d, device=args.device, seed=args.seed, voice=args.voice, **sampling))
            if args.clone_check:
                if args.voice or "sim" not in metrics:
                    raise LlamaVoiceError("--clone-check clones each item's prompt and scores speaker similarity: "
                                          "drop --voice and keep sim in --metrics")
                rival = LlamaVoiceSystem(d, device=args.device, seed=args.seed, voice="default",
                                         name=f"{systems[-1].name}@default", **sampling)
                systems.append(rival)
                pairs.append((systems[-2].name, rival.name))
        command = shlex.join(["python", "recipes/eval.py", *(argv if argv is not None else sys.argv[1:])])
        result = run_eval(items, systems, out, metrics=metrics,
                          info={"eval_list": str(eval_list), "command": command})
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(markdown_table(result.summary))
    if pairs:
        wins = [paired_wins(result.rows, clone, rival) for clone, rival in pairs]
        (result.out_dir / "clone_check.json").write_text(json.dumps(wins, indent=2))
        for w in wins:
            share = "–" if w["share"] is None else f"{100 * w['share']:.0f} %"
            print(f"{w['system']}: the clone is closer to the reference than the default voice on {w['wins']} of "
                  f"{w['compared']} items ({share}); {w['left_out']} left out")
    print(f"run directory: {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The ceiling for a voice: its teacher engine reading the held-out test sentences.

    python -m recipes.default_model.teacher_ceiling --corpus /work/corpus --speaker fest_slt_hts \
        --out /work/runs/teacher-fest_slt_hts
    python recipes/eval.py --eval-list /work/runs/teacher-fest_slt_hts/eval_list.jsonl --teacher --metrics asr,mos

Each of the corpus's 100 held-out test sentences was recorded by one voice only, so the test set
says how well the teachers read on average, not how well the default voice's teacher does. This
renders every distinct held-out sentence with ``--speaker``'s own engine, post-processed exactly as
the corpus's training clips were (recipes/data/voices.py), and writes an eval list whose references
are those renders; ``recipes/eval.py --teacher`` then scores them as it scores any reference. The
model speaking in that voice cannot be expected to beat this. The engine must be installed (the
corpus recipe's ``voice_available`` says how).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from llamavoice.errors import ConfigError, LlamaVoiceError  # noqa: E402

HELDOUT_SENTENCES = "manifest_heldout_sentences.jsonl"


def heldout_texts(corpus: Path) -> list[str]:
    """The distinct held-out test sentences, in manifest order."""
    manifest = corpus / HELDOUT_SENTENCES
    if not manifest.is_file():
        raise ConfigError(f"{manifest} not found; pass --corpus the directory recipes/data/build_corpus.py wrote")
    texts = [json.loads(line)["text"] for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(texts))


def render_eval_list(texts: list[str], speaker: str, out: Path, seed: int = 1234) -> Path:
    """Speak ``texts`` with ``speaker``'s teacher into ``out``; returns the eval list (reference = prompt = render)."""
    import soundfile as sf

    from recipes.data.voices import TARGET_SR, catalogue_by_name, synthesize, utterance_seed, voice_available

    spec = catalogue_by_name().get(speaker)
    if spec is None:
        raise ConfigError(f"unknown corpus voice {speaker!r}; choose one of {', '.join(sorted(catalogue_by_name()))}")
    ok, why = voice_available(spec)
    if not ok:
        raise ConfigError(f"cannot render {speaker}: {why}")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, text in enumerate(texts):
        item_id = f"{speaker}_{n:03d}"
        wav = out / f"{item_id}.wav"
        sf.write(wav, synthesize(spec, text, utterance_seed(seed, item_id)), TARGET_SR)
        rows.append({"id": item_id, "text": text, "reference": wav.name, "prompt": wav.name, "speaker": speaker})
    eval_list = out / "eval_list.jsonl"
    eval_list.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return eval_list


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus directory with the held-out manifests")
    parser.add_argument("--speaker", required=True, help="corpus voice to render, e.g. fest_slt_hts")
    parser.add_argument("--out", type=Path, required=True, help="directory for the renders and eval_list.jsonl")
    parser.add_argument("--max-items", type=int, default=None, help="render only the first N sentences")
    args = parser.parse_args(argv)
    try:
        eval_list = render_eval_list(heldout_texts(args.corpus)[: args.max_items], args.speaker, args.out)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {eval_list}; score it with:\n"
          f"  python recipes/eval.py --eval-list {eval_list} --teacher --metrics asr,mos")
    return 0


if __name__ == "__main__":
    sys.exit(main())

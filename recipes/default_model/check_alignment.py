#!/usr/bin/env python
"""Check a model's learned text alignment against Piper's phoneme durations, on held-out sentences.

    python recipes/default_model/check_alignment.py --model-dir llamavoice/checkpoints/default \
        --corpus /work/corpus --sentences 20

Piper's joe voice (the corpus' speaker ``joe``; zero noise, so the figures repeat) speaks each
sentence and reports how long every phoneme lasts; the audio, resampled to the model's rate and
loudness-normalized like the corpus, is read teacher-forced by the model's LM with a ``joe`` corpus
clip as the voice prompt, and the word onsets its alignment attention implies are compared with
Piper's. Prints a Markdown table (the learned alignment, by expected and by most-attended text
position, against a uniform pace) and writes one CSV row per sentence. See llamavoice/eval/alignment.py.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from llamavoice.errors import LlamaVoiceError  # noqa: E402

# CSV column prefix → table row
METHODS = {"learned": "learned (expected position)", "argmax": "learned (argmax)", "uniform": "uniform pace"}


def heldout_sentences(corpus: Path, count: int) -> list[str]:
    """The first ``count`` held-out sentences (``heldout_sentences.txt``, else the held-out manifest)."""
    listed = corpus / "heldout_sentences.txt"
    if listed.is_file():
        texts = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        from llamavoice.data.manifest import read_manifest

        texts = list(dict.fromkeys(e.text for e in read_manifest(corpus / "manifest_heldout_sentences.jsonl")))
    return texts[:count]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--model-dir", type=Path, default=Path("llamavoice/checkpoints/default"))
    p.add_argument("--corpus", type=Path, required=True, help="corpus directory (held-out sentences, train manifest)")
    p.add_argument("--sentences", type=int, default=20)
    p.add_argument("--speaker", default="joe", help="corpus speaker whose clip is the voice prompt (Piper's joe)")
    p.add_argument("--csv", type=Path, default=Path("check_alignment.csv"), help="per-sentence rows")
    p.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    args = p.parse_args(argv)

    import llamavoice
    from llamavoice.audio import resample
    from llamavoice.eval.alignment import (
        learned_alignment,
        onset_figures,
        onsets_from_attention,
        render_with_piper,
        uniform_onsets,
        word_errors,
        word_starts,
    )
    from llamavoice.eval.systems import PiperSystem
    from recipes.data.voices import loudness_normalize
    from recipes.default_model.kit import VOICE_CLIP_LIMITS, no_clip_message, pick_clip

    try:
        # The clip the default voices are made from (recipes/default_model/export_run.py).
        clip = pick_clip(args.corpus / "manifest_train.jsonl", args.speaker, **VOICE_CLIP_LIMITS)
        if clip is None:
            raise LlamaVoiceError(f"speaker {args.speaker!r}: {no_clip_message(VOICE_CLIP_LIMITS)} in "
                                  f"{args.corpus}/manifest_train.jsonl")
        tts = llamavoice.load(args.model_dir, device="cpu", dtype="fp32", threads=args.threads)
        prompt = tts.encode_voice(clip["audio"]).latents
        piper = PiperSystem(deterministic=True, threads=args.threads, alignments=True)
        sr, tok = tts.sample_rate, tts.tokenizer
        if tok.frontend != "phonemes":
            raise LlamaVoiceError("the check needs word boundaries in the text tokens: a phoneme front end model")
        errors: dict[str, list[float]] = {m: [] for m in METHODS}
        rows, skipped = [], 0
        for n, sentence in enumerate(heldout_sentences(args.corpus, args.sentences)):
            ids = tok.encode(sentence)
            starts = word_starts(tok.decode(ids).split())
            # Piper reads our normalized text, so both sides see the same words (numbers written out).
            spoken = render_with_piper(piper, tok.normalize(sentence))
            row = {"n": n, "text": sentence, "words": len(starts), "piper_words": len(spoken.words),
                   "seconds": round(len(spoken.audio) / spoken.sample_rate, 3)}
            if len(spoken.words) != len(starts):  # espeak and gruut split this sentence differently
                skipped += 1
                rows.append({**row, "skipped": "word counts differ"})
                continue
            audio = loudness_normalize(resample(spoken.audio, spoken.sample_rate, sr), sr)
            attention = learned_alignment(tts.model, audio, ids, prompt)
            onsets = {
                "learned": onsets_from_attention(attention, starts, tts.frame_rate, "expected"),
                "argmax": onsets_from_attention(attention, starts, tts.frame_rate, "argmax"),
                "uniform": uniform_onsets(starts, len(ids), len(spoken.audio) / spoken.sample_rate),
            }
            row["piper_onsets"] = " ".join(f"{t:.3f}" for t in spoken.onsets)
            for key, predicted in onsets.items():
                e = word_errors(predicted, spoken.onsets)
                errors[key] += e
                row[f"{key}_mae_ms"] = round(onset_figures(e)["mae_ms"], 1)
                row[f"{key}_onsets"] = " ".join(f"{t:.3f}" for t in predicted)
            rows.append(row)
            print(f"{n:3d} {row['learned_mae_ms']:7.1f} {row['argmax_mae_ms']:7.1f} {row['uniform_mae_ms']:7.1f}  "
                  f"{sentence}", file=sys.stderr)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
    compared = len(rows) - skipped
    print(f"{args.model_dir}: {compared} of {len(rows)} held-out sentences compared ({skipped} skipped: "
          f"espeak and gruut split their words differently); Piper joe, voice prompt {Path(clip['audio']).name}; "
          "first words left out\n")
    print("| alignment | words | MAE ms | bias ms | within 50 ms | within 100 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, method in METHODS.items():
        fig = onset_figures(errors[key])
        print(f"| {method} | {fig['words']} | {fig['mae_ms']:.0f} | {fig['bias_ms']:+.0f} | "
              f"{100 * fig['within_50ms']:.0f} % | {100 * fig['within_100ms']:.0f} % |")
    print(f"\nper sentence: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

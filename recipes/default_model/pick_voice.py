#!/usr/bin/env python
"""Choose a model's default voice: which training speaker's clip it speaks most intelligibly.

    python -m recipes.default_model.pick_voice llamavoice/checkpoints/default --corpus /work/corpus --seeds 0 1
    python -m recipes.default_model.pick_voice MODEL_DIR --corpus /work/corpus --speakers joe \
        --sampling '{"temperature": 0.2}' --sampling '{"temperature": 0.4}'
    python -m recipes.default_model.pick_voice MODEL_DIR --corpus /work/corpus --set-default joe

The model speaks the sentences of ``voice_selection.txt`` (written for this, not from the corpus, so
the 100 held-out test sentences stay a test set) once per training speaker, with that speaker's clip
as the voice (the clip an export would ship: the one closest to 5 s; ``--clips N``: each of the N
closest, to see whether the prompt matters), at the model's own sampling
defaults (or each ``--sampling``) and each ``--seeds``: the same sentences also choose the sampling
settings a model ships in ``sampling.json``. Whisper's word errors over all of them rank the speakers; a Markdown
table goes to stdout and every transcript to ``--out``. ``--set-default SPEAKER`` then re-encodes
the model's voices with that speaker's clip as ``default`` (export_run's ``--default-voice`` does
the same at export).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from llamavoice.errors import LlamaVoiceError  # noqa: E402

SENTENCES = Path(__file__).with_name("voice_selection.txt")
TRAIN_MANIFEST = "manifest_train.jsonl"


def read_sentences(path: Path) -> list[str]:
    """Non-empty lines that are not ``#`` comments."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def training_speakers(corpus: Path) -> list[str]:
    from llamavoice.data.manifest import read_manifest

    return sorted({e.speaker for e in read_manifest(corpus / TRAIN_MANIFEST)})


@dataclass
class SpeakerScore:
    speaker: str
    clip: str
    sampling: dict = field(default_factory=dict)  # overrides of the model's sampling defaults
    errors: int = 0
    words: int = 0
    per_seed: dict[int, float] = field(default_factory=dict)
    mos: list[float] = field(default_factory=list)  # DistillMOS of each sentence, with --mos

    @property
    def wer(self) -> float:
        return 100.0 * self.errors / max(self.words, 1)

    @property
    def mean_mos(self) -> float | None:
        return sum(self.mos) / len(self.mos) if self.mos else None


def score_speakers(model_dir: Path, corpus: Path, speakers: list[str], sentences: list[str], seeds: list[int],
                   log_rows: list[dict], mos: bool = False, samplings: list[dict] | None = None,
                   clips: int = 1) -> list[SpeakerScore]:
    """Word errors (and DistillMOS, with ``mos``) of every speaker's voice (from each of its ``clips``
    clips closest to 5 s) at every sampling (overrides of the model's defaults) over ``sentences`` ×
    ``seeds``, fewest errors first."""
    import llamavoice
    from llamavoice.eval.metrics import AsrScorer, MosScorer
    from recipes.default_model.kit import VOICE_CLIP_LIMITS, no_clip_message, pick_clips

    tts = llamavoice.load(model_dir)
    asr = AsrScorer(cpu_threads=1)
    mos_scorer = MosScorer() if mos else None
    scores = []
    for speaker in speakers:
        speaker_clips = pick_clips(corpus / TRAIN_MANIFEST, speaker, clips, **VOICE_CLIP_LIMITS)
        if not speaker_clips:
            print(f"skipped {speaker}: {no_clip_message(VOICE_CLIP_LIMITS)}", file=sys.stderr)
        for clip in speaker_clips:
            voice = tts.encode_voice(clip["audio"], name=speaker)
            for sampling in samplings or [{}]:
                score = SpeakerScore(speaker, Path(clip["audio"]).name, sampling)
                for seed in seeds:
                    _score_seed(tts, voice, asr, mos_scorer, score, sentences, seed, log_rows)
                print(f"{speaker} {score.clip} {json.dumps(sampling)}: WER {score.wer:.1f}",
                      file=sys.stderr, flush=True)
                scores.append(score)
    return sorted(scores, key=lambda s: s.wer)


def _score_seed(tts, voice, asr, mos_scorer, score: SpeakerScore, sentences: list[str], seed: int,
                log_rows: list[dict]) -> None:
    """Speak every sentence with one seed; add its errors (and DistillMOS) to ``score``."""
    errors = words = 0
    for text in sentences:
        audio, sr = tts.synthesize(text, voice=voice, seed=seed, progress=False, **score.sampling)
        result = asr.score(audio, sr, text)
        errors, words = errors + result.words.errors, words + result.words.reference_length
        row = {"speaker": score.speaker, "clip": score.clip, "sampling": score.sampling, "seed": seed, "text": text,
               "hypothesis": result.hypothesis, "word_errors": result.words.errors,
               "words": result.words.reference_length}
        if mos_scorer is not None:
            row["mos"] = mos_scorer.score(audio, sr)
            score.mos.append(row["mos"])
        log_rows.append(row)
    score.per_seed[seed] = 100.0 * errors / words
    score.errors, score.words = score.errors + errors, score.words + words


def markdown(scores: list[SpeakerScore], seeds: list[int]) -> str:
    with_mos = any(s.mos for s in scores)
    head = ("| speaker | clip | sampling | WER % | " + " | ".join(f"seed {s}" for s in seeds) + " |"
            + (" DistillMOS |" if with_mos else ""))
    rule = "| --- " * (4 + len(seeds) + with_mos) + "|"
    rows = [f"| {s.speaker} | {s.clip} | {json.dumps(s.sampling) if s.sampling else 'defaults'} | {s.wer:.1f} | "
            + " | ".join(f"{s.per_seed[k]:.1f}" for k in seeds) + " |"
            + (f" {s.mean_mos:.2f} |" if with_mos else "") for s in scores]
    return "\n".join([head, rule, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="corpus with manifest_train.jsonl")
    parser.add_argument("--speakers", nargs="+", help="only these training speakers (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sentences", type=Path, default=SENTENCES)
    parser.add_argument("--out", type=Path, help="write every transcript here (JSON)")
    parser.add_argument("--sampling", action="append", metavar="JSON",
                        help="score the voices at these overrides of the model's sampling defaults, e.g. "
                             "'{\"temperature\": 0.2}' (repeat to compare settings; default: the model's own)")
    parser.add_argument("--clips", type=int, default=1,
                        help="score each speaker with its N clips closest to 5 s (does the prompt matter?)")
    parser.add_argument("--mos", action="store_true", help="also score DistillMOS (the tie-break between close WERs)")
    parser.add_argument("--set-default", metavar="SPEAKER",
                        help="skip the ranking; make SPEAKER's clip the model's default voice")
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be 1 or more")
    try:
        if args.set_default:
            from recipes.default_model.kit import VOICE_CLIP_LIMITS, encode_default_voices

            voices = encode_default_voices(args.model_dir, args.corpus, default=args.set_default, **VOICE_CLIP_LIMITS)
            print(json.dumps(voices, indent=1))
            return 0
        from recipes.eval import parse_sampling

        samplings = [parse_sampling(text) for text in args.sampling or []]  # checked before any model loads
        speakers = args.speakers or training_speakers(args.corpus)
        rows: list[dict] = []
        scores = score_speakers(args.model_dir, args.corpus, speakers, read_sentences(args.sentences), args.seeds, rows,
                                args.mos, samplings, args.clips)
        if args.out:
            args.out.write_text(json.dumps({"scores": [vars(s) | {"wer": s.wer, "mean_mos": s.mean_mos}
                                                       for s in scores], "items": rows}, indent=1))
    except (LlamaVoiceError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(scores, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())

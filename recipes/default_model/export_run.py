"""Export a training run (the newest checkpoint, EMA weights when kept) as a shippable model directory.

    python -m recipes.default_model.export_run /work/runs/lm-cpu /work/runs/exports/lm-cpu --corpus /work/corpus
    python -m recipes.default_model.export_run /work/runs/lm-cpu OUT --corpus /work/corpus --install
    python -m recipes.default_model.export_run RUN OUT --corpus /work/corpus --decoder-from /work/runs/decoder-cpu

Writes fp16 weights + tokenizer + config, the default voices (one corpus clip each, ~5 s: the CPU
recipe trains on prompts of at most 6 s), a ``training_summary.json`` from the run's metrics, and
checks the result the way users load it (``llamavoice.load`` + one sentence with the default voice).
``--install`` then replaces ``llamavoice/checkpoints/default`` with it (never half-installed).
``--sampling '{"temperature": 0.4, "cfg_weight": 2.0}'`` writes the model's sampling defaults
(``sampling.json``, checked as the API checks it). ``--default-voice SPEAKER`` makes that training
speaker's clip the default voice (``pick_voice.py`` ranks them). ``--decoder-from`` takes the voice decoder from
another run or model (stage ``decoder``: trained on the same frozen encoder, so on the same latent
space; an encoder that differs is refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llamavoice.errors import ConfigError, LlamaVoiceError
from recipes.default_model.fetch import install
from recipes.default_model.kit import (
    VOICE_CLIP_LIMITS,
    encode_default_voices,
    load_run_weights,
    verify_model,
    write_weights,
)

DEFAULT_DEST = Path(__file__).resolve().parents[2] / "llamavoice" / "checkpoints" / "default"


def run_summary(run_dir: Path) -> dict:
    """Steps, the last validation figures and the run's config, for the model card."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    keep = ("kl", "stop", "align", "diagonality", "text_gap")
    return {"steps": train[-1]["step"] if train else 0,
            "last_val": {k: round(v, 4) for k, v in (val[-1] if val else {}).items() if k in keep or k == "step"},
            "config": (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else None}


def take_decoder(model: Any, source: Path) -> dict:
    """Replace ``model``'s VAE decoder by the one of ``source`` (a run or a saved model directory).
    Both VAEs must share the encoder bit for bit: a decoder only fits the latent space it was
    trained on."""
    import torch

    from llamavoice.models.llamavoice import LlamaVoice

    donor, info = (LlamaVoice.from_pretrained(source), {"source": str(source)}) if (source / "config.json").is_file() \
        else load_run_weights(source)
    ours, theirs = model.vae.encoder.state_dict(), donor.vae.encoder.state_dict()
    same = ours.keys() == theirs.keys() and all(
        torch.equal(ours[k].float(), theirs[k].float().to(ours[k].device)) for k in ours)
    if not same:
        raise ConfigError(f"the decoder of {source} was trained on another encoder (another latent space) than the "
                          "run being exported; train it with stage 'decoder' from this run's VAE")
    model.vae.decoder.load_state_dict(donor.vae.decoder.state_dict())
    return {"decoder_from": info}


def export_run(run_dir: Path, out: Path, corpus: Path, prompt_seconds: float = 5.0,
               decoder_from: Path | None = None, sampling: dict | None = None,
               default_voice: str | None = None) -> dict:
    from llamavoice.inference.api import SAMPLING_FILE, read_sampling_defaults

    model, info = load_run_weights(run_dir)
    if decoder_from is not None:
        info.update(take_decoder(model, decoder_from))
    write_weights(model, out, {"kind": "export", **info})
    limits = {**VOICE_CLIP_LIMITS, "target": prompt_seconds}
    voices = encode_default_voices(out, corpus, default=default_voice, **limits)
    if sampling:
        (out / SAMPLING_FILE).write_text(json.dumps(sampling, indent=1) + "\n")
        read_sampling_defaults(out)  # refuses unknown fields and values out of range, as loading would
        info["sampling"] = sampling
    summary = {"run": str(run_dir), **info, **run_summary(run_dir)}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=1))
    return {"export": str(out), "voices": [v["voice"] for v in voices if "skipped" not in v], **info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--corpus", type=Path, required=True, help="the corpus the default voices come from")
    parser.add_argument("--decoder-from", type=Path, help="take the voice decoder from this run or model directory")
    parser.add_argument("--sampling", type=json.loads, help="sampling defaults of the model, a JSON object")
    parser.add_argument("--default-voice", metavar="SPEAKER",
                        help="the training speaker whose clip becomes the default voice (pick_voice.py ranks them)")
    parser.add_argument("--install", action="store_true", help=f"then replace {DEFAULT_DEST} with the export")
    args = parser.parse_args(argv)
    try:
        report = export_run(args.run_dir, args.out, args.corpus, decoder_from=args.decoder_from,
                            sampling=args.sampling, default_voice=args.default_voice)
        report["verify"] = verify_model(args.out, wav_out=args.out.parent / f"{args.out.name}_verify.wav")
        if args.install:
            report["installed"] = str(install(args.out, DEFAULT_DEST))
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""PESQ (wide-band, 16 kHz) of VAE reconstructions of held-out audio.

Each utterance is encoded to the posterior mean and decoded (no sampling), then compared with the
original, both resampled to 16 kHz. Works on an exported model or on a training checkpoint (its EMA
weights when the run kept an EMA)::

    python benchmarks/vae_pesq.py runs/small-vae/final --manifest /work/corpus/manifest_heldout_sentences.jsonl
    python benchmarks/vae_pesq.py runs/small-vae/checkpoints/step_00004000 --manifest ... --limit 30

Needs ``pip install pesq``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_model(path: Path, use_ema: bool = True):
    from llamavoice.models.llamavoice import LlamaVoice
    from llamavoice.train.checkpoint import model_from_checkpoint

    if (path / "config.json").is_file():
        return LlamaVoice.from_pretrained(path), "export"
    return model_from_checkpoint(path, use_ema=use_ema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="save_pretrained dir or checkpoints/step_N dir")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int, default=40, help="utterances (spread over the manifest)")
    parser.add_argument("--no-ema", action="store_true")
    parser.add_argument("--json", default=None, help="also write the per-utterance scores here")
    args = parser.parse_args()

    import numpy as np
    import torch
    from pesq import pesq

    from llamavoice.audio import load_audio, resample
    from llamavoice.data.manifest import read_manifest

    torch.set_grad_enabled(False)
    model, which = load_model(args.model, use_ema=not args.no_ema)
    sr, spl = model.sample_rate, model.config.audio.samples_per_latent
    entries = read_manifest(args.manifest)
    stride = max(1, len(entries) // args.limit)
    scores = []
    for entry in entries[::stride][: args.limit]:
        audio, _ = load_audio(entry.audio, sr)
        n = len(audio) // spl * spl
        x = torch.from_numpy(audio[:n])[None]
        mu, _ = model.vae.encode(x)
        y = model.vae.decode(mu)[0].float().numpy()
        ref16, deg16 = resample(audio[:n], sr, 16000), resample(np.clip(y, -1, 1), sr, 16000)
        try:
            score = float(pesq(16000, ref16, deg16, "wb"))
        except Exception as exc:  # pesq raises on e.g. no detected speech
            print(f"skip {entry.audio}: {exc}", file=sys.stderr)
            continue
        scores.append({"audio": entry.audio, "speaker": entry.speaker, "pesq": score})
    values = np.array([s["pesq"] for s in scores])
    summary = {"model": str(args.model), "weights": which, "n": len(values), "pesq_mean": float(values.mean()),
               "pesq_median": float(np.median(values)), "pesq_min": float(values.min())}
    by_speaker: dict[str, list[float]] = {}
    for s in scores:
        by_speaker.setdefault(s["speaker"], []).append(s["pesq"])
    summary["by_speaker"] = {k: round(float(np.mean(v)), 3) for k, v in sorted(by_speaker.items())}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "items": scores}, indent=1))


if __name__ == "__main__":
    main()

"""VAE reconstruction quality: encode held-out audio, decode the posterior mean, compare.

Metrics are time-aligned and reference-based: wide-band PESQ, STOI and log-mel L1 distance
(:mod:`llamavoice.eval.metrics`). Optional *anchors* score simple, well-known degradations of the
same clips (band-limiting to 8 kHz and to telephone band) so the VAE's numbers can be read
against something familiar.

With the clips' texts, ``metrics=("asr", "mos")`` also scores what the LM cannot beat: Whisper's
WER/CER and DistillMOS of the reconstructions, beside the same scores of the original clips.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamavoice.audio import load_audio, resample, save_audio
from llamavoice.errors import ConfigError
from llamavoice.eval.metrics import AsrScorer, EvalDependencyError, MosScorer, mel_distance, pesq_wb, stoi
from llamavoice.eval.report import device_info, error_rate, finite_mean, json_safe

VAE_FIELDS = ["system", "clip", "audio_s", "pesq_wb", "stoi", "mel_distance", "hypothesis", "word_errors", "words",
              "char_errors", "chars", "mos", "error"]
VAE_METRICS = ("asr", "mos")  # optional, on top of the reference-based PESQ-WB, STOI and mel distance
NUMERIC_FIELDS = ("pesq_wb", "stoi", "mel_distance", "word_errors", "words", "char_errors", "chars", "mos")
ORIGINAL = "original"  # the clip itself: the ASR/MOS ceiling the reconstruction is read against


def reconstruct(model: Any, audio: np.ndarray) -> np.ndarray:
    """Waveform → VAE posterior mean → decoded waveform (both at the model's sample rate)."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(model.device)
    with torch.inference_mode():
        mu, _ = model.vae.encode(x)
        y = model.vae.decode(mu)
    return y[0].float().cpu().numpy()


def _band_limit(audio: np.ndarray, sr: int, rate: int) -> np.ndarray:
    return resample(resample(audio, sr, rate), rate, sr)[: len(audio)]


ANCHORS = {"anchor: 16 kHz band-limit": 16000, "anchor: 8 kHz telephone band": 8000}


def run_vae_eval(model: Any, clips: Sequence[str | Path], out_dir: str | Path, anchors: bool = True,
                 save_generated: bool = False, progress: bool = True,
                 info: dict[str, Any] | None = None, texts: Sequence[str] | None = None,
                 metrics: Sequence[str] = ()) -> dict[str, Any]:
    """Score VAE reconstructions of ``clips``; ``model`` is a LlamaVoice or a saved model directory.

    ``metrics`` may add ``"asr"`` (needs ``texts``, one per clip) and ``"mos"``; then the original
    clips are scored too, as system ``"original"``. Writes ``vae_utterances.csv``,
    ``vae_summary.json`` and ``vae_summary.md`` in ``out_dir`` and returns the summary (mean
    PESQ-WB, STOI and mel distance per system, and WER/CER/DistillMOS when asked).
    """
    from tqdm.auto import tqdm

    if not clips:
        raise ConfigError("no audio clips to reconstruct")
    unknown = sorted(set(metrics) - set(VAE_METRICS))
    if unknown:
        raise ConfigError(f"unknown VAE metric(s) {unknown}; choose from {list(VAE_METRICS)}")
    if "asr" in metrics and (texts is None or len(texts) != len(clips)):
        raise ConfigError("the asr metric needs the text of every clip: use an --eval-list (its items' texts)")
    asr = AsrScorer() if "asr" in metrics else None
    mos = MosScorer() if "mos" in metrics else None
    if isinstance(model, (str, Path)):
        from llamavoice.models.llamavoice import LlamaVoice

        model = LlamaVoice.from_pretrained(model)
    was_training = model.training
    model.eval()
    sr = model.sample_rate
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        for index, clip in enumerate(tqdm(clips, disable=not progress, desc="vae", unit="clip")):
            ref, _ = load_audio(clip, sr)
            candidates = {"vae": lambda ref=ref: reconstruct(model, ref)}
            if asr is not None or mos is not None:
                candidates[ORIGINAL] = lambda ref=ref: ref
            if anchors:
                for name, rate in ANCHORS.items():
                    candidates[name] = lambda ref=ref, rate=rate: _band_limit(ref, sr, rate)
            for name, make in candidates.items():
                row: dict[str, Any] = {field: "" for field in VAE_FIELDS}
                row.update(system=name, clip=str(clip), audio_s=len(ref) / sr)
                row.update({field: math.nan for field in NUMERIC_FIELDS})
                try:
                    deg = make()
                    if save_generated and name == "vae":
                        save_audio(out_dir / "audio" / f"{Path(clip).stem}.wav", deg, sr)
                    if name != ORIGINAL:  # the reference-based scores of a clip against itself say nothing
                        row["mel_distance"] = mel_distance(ref, deg, sr)
                        row["pesq_wb"] = pesq_wb(ref, deg, sr)
                        row["stoi"] = stoi(ref, deg, sr)
                    if name in ("vae", ORIGINAL):
                        if asr is not None and texts is not None:
                            res = asr.score(deg, sr, texts[index])
                            row.update(hypothesis=res.hypothesis, word_errors=res.words.errors,
                                       words=res.words.reference_length, char_errors=res.chars.errors,
                                       chars=res.chars.reference_length)
                        if mos is not None:
                            row["mos"] = mos.score(deg, sr)
                except EvalDependencyError:
                    raise
                except Exception as exc:  # one bad clip is reported, the run goes on
                    row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
    finally:
        model.train(was_training)

    with open(out_dir / "vae_utterances.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=VAE_FIELDS)
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                         for r in rows)
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["system"] for r in rows):
        sel = [r for r in rows if r["system"] == name]
        summary[name] = {"n": len(sel), "failed": sum(1 for r in sel if r["error"]),
                         "pesq_wb": finite_mean(r["pesq_wb"] for r in sel), "stoi": finite_mean(r["stoi"] for r in sel),
                         "mel_distance": finite_mean(r["mel_distance"] for r in sel),
                         "wer": error_rate(sel, "word_errors", "words"), "cer": error_rate(sel, "char_errors", "chars"),
                         "mos": finite_mean(r["mos"] for r in sel)}
    meta = {"clips": len(clips), "sample_rate": sr, "wall_s": round(time.time() - started, 1),
            "device": device_info(), **(info or {})}
    (out_dir / "vae_summary.json").write_text(json.dumps(json_safe({"run": meta, "systems": summary}), indent=2))
    fmt = lambda v, d=3: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    md = ("| system | n | failed | PESQ-WB | STOI | mel L1 | WER % | CER % | DistillMOS |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for name, s in summary.items():
        md += (f"| {name} | {s['n']} | {s['failed']} | {fmt(s['pesq_wb'], 2)} | {fmt(s['stoi'])} | "
               f"{fmt(s['mel_distance'])} | {fmt(pct(s['wer']), 1)} | {fmt(pct(s['cer']), 1)} | {fmt(s['mos'], 2)} |\n")
    (out_dir / "vae_summary.md").write_text(md)
    return summary

"""The evaluation harness: score pluggable TTS systems on one eval list, write one run directory.

The eval list (:mod:`~llamavoice.eval.lists`) says what to speak, the systems
(:mod:`~llamavoice.eval.systems`) speak it, :func:`score_item` measures each utterance with the
model-based scorers (:mod:`~llamavoice.eval.metrics`) and :func:`run_eval` writes the run directory
with the report (:mod:`~llamavoice.eval.report`):
``utterances.csv`` (one row per system x item), ``summary.json``, ``summary.md`` and ``plot.png``
(WER and SIM-o per speaker), plus the generated audio under ``audio/<system>/`` unless disabled.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from llamavoice.audio import save_audio
from llamavoice.errors import ConfigError
from llamavoice.eval.lists import EvalItem
from llamavoice.eval.metrics import AsrScorer, EvalDependencyError, MosScorer, SpeakerScorer
from llamavoice.eval.report import device_info, json_safe, markdown_table, plot_summary, summarize

METRICS = ("asr", "sim", "mos", "speed")


@dataclass
class Scorers:
    """The model-based scorers, created lazily and shared across systems and calls."""

    asr: AsrScorer = field(default_factory=AsrScorer)
    speaker: SpeakerScorer = field(default_factory=SpeakerScorer)
    mos: MosScorer = field(default_factory=MosScorer)


CSV_FIELDS = ["system", "item_id", "speaker", "text", "hypothesis", "wer", "cer", "word_errors", "words",
              "char_errors", "chars", "sim_o", "sim_prompt", "mos", "audio_s", "synth_s", "rtf", "ttfa_s",
              "audio_path", "error"]

NAN = float("nan")


def _check_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    metrics = tuple(metrics)
    bad = sorted(set(metrics) - set(METRICS))
    if bad:
        raise ConfigError(f"unknown metric(s) {bad}; choose from {list(METRICS)}")
    return metrics


def _time_to_first_audio(system: Any, item: EvalItem) -> float:
    t0 = time.perf_counter()
    chunks = iter(system.stream(item.text, item.prompt))
    try:
        for chunk in chunks:
            if np.asarray(chunk).size:
                return time.perf_counter() - t0
        return NAN
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stop generating the rest: only the first chunk is timed


def score_item(system: Any, item: EvalItem, scorers: Scorers, metrics: Sequence[str] = METRICS,
               audio_dir: Path | None = None) -> tuple[dict[str, Any], np.ndarray | None, int]:
    """Synthesize one item and score it. Failures are recorded in the row's ``error``, never raised."""
    row: dict[str, Any] = {k: NAN for k in CSV_FIELDS}
    row.update(system=system.name, item_id=item.item_id, speaker=item.speaker, text=item.text, hypothesis="",
               audio_path="", error="")
    ground_truth = bool(getattr(system, "is_ground_truth", False))
    audio, sr = None, 0
    try:
        t0 = time.perf_counter()
        audio, sr = system.synthesize(item.text, item.prompt)
        synth_s = time.perf_counter() - t0
        audio = np.asarray(audio, dtype=np.float32)
        row["audio_s"] = len(audio) / sr if sr else NAN
        if "speed" in metrics and not ground_truth:
            row["synth_s"] = synth_s
            row["rtf"] = synth_s / row["audio_s"] if row["audio_s"] else NAN
            if hasattr(system, "stream"):
                row["ttfa_s"] = _time_to_first_audio(system, item)
        if audio_dir is not None and audio.size:
            path = audio_dir / f"{item.item_id}.wav"
            save_audio(path, audio, sr)
            row["audio_path"] = str(path)
        if "asr" in metrics:
            res = scorers.asr.score(audio, sr, item.text)
            row.update(hypothesis=res.hypothesis, wer=res.words.rate, cer=res.chars.rate,
                       word_errors=res.words.errors, words=res.words.reference_length,
                       char_errors=res.chars.errors, chars=res.chars.reference_length)
        if "sim" in metrics:
            emb = scorers.speaker.embed(audio, sr)
            prompt_emb = scorers.speaker.embed_file(item.prompt) if item.prompt is not None else None
            if prompt_emb is not None:
                row["sim_prompt"] = scorers.speaker.cosine(emb, prompt_emb)
            if ground_truth:
                # The output *is* the reference: compare with the other clip (the prompt) instead.
                row["sim_o"] = row["sim_prompt"]
            elif item.reference is not None:
                row["sim_o"] = scorers.speaker.cosine(emb, scorers.speaker.embed_file(item.reference))
        if "mos" in metrics:
            row["mos"] = scorers.mos.score(audio, sr)
    except EvalDependencyError:
        raise  # a missing package fails every item the same way: stop and say so once
    except Exception as exc:  # one bad item must not end a long run; it is counted and shown
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    return row, audio, sr


@dataclass
class EvalRun:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def run_eval(items: Sequence[EvalItem], systems: Sequence[Any], out_dir: str | Path,
             metrics: Iterable[str] = METRICS, scorers: Scorers | None = None, save_generated: bool = True,
             warmup: bool = True, progress: bool = True, info: dict[str, Any] | None = None) -> EvalRun:
    """Score every system on every item and write the run directory (see module docstring).

    ``warmup`` runs each non-ground-truth system once, untimed, before timing (first calls pay for
    lazy loading and compilation). Rows are appended to ``utterances.csv`` as they are scored, so
    an interrupted run keeps what it measured.
    """
    from tqdm.auto import tqdm

    metrics = _check_metrics(metrics)
    if not items:
        raise ConfigError("nothing to evaluate: the eval list is empty")
    if not systems:
        raise ConfigError("nothing to evaluate: give at least one system (a model dir, --teacher or --piper)")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ConfigError(f"system names must be unique, got {names}")
    scorers = scorers or Scorers()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(items) * len(systems), disable=not progress, unit="utt", dynamic_ncols=True)
    with open(out_dir / "utterances.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for system in systems:
            bar.set_description(system.name)
            if warmup and not getattr(system, "is_ground_truth", False):
                _warm_up(system, items)
            audio_dir = out_dir / "audio" / _safe_name(system.name) if save_generated else None
            for item in items:
                row, _, _ = score_item(system, item, scorers, metrics, audio_dir)
                rows.append(row)
                writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v)
                                 for k, v in row.items()})
                f.flush()
                bar.update(1)
                if row["error"]:
                    bar.write(f"[{system.name}] {item.item_id}: {row['error']}")
    bar.close()

    summary = summarize(rows)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "items": len(items),
        "speakers": len({it.speaker for it in items}),
        "metrics": list(metrics),
        "asr_model": scorers.asr.model_name if "asr" in metrics else None,
        "device": dict(device_info(), load_avg_1m_start=load_start),
        **(info or {}),
    }
    (out_dir / "summary.json").write_text(json.dumps(json_safe({"run": meta, "systems": summary}), indent=2))
    md = [f"# Evaluation run {out_dir.name}\n", f"{meta['items']} items, {meta['speakers']} speakers; "
          f"metrics: {', '.join(metrics)}; device: {meta['device']['cpu']} "
          f"({meta['device']['cpu_count']} cores, {meta['device']['torch_threads']} torch threads, "
          f"load average {load_start} → {meta['device'].get('load_avg_1m')}"
          + (f", {meta['device']['cuda_device']}" if "cuda_device" in meta["device"] else "") + ").\n"]
    if "command" in meta:
        md.append(f"\n```\n{meta['command']}\n```\n")
    md.append("\n" + markdown_table(summary))
    (out_dir / "summary.md").write_text("".join(md))
    plot_summary(summary, out_dir / "plot.png")
    return EvalRun(out_dir, rows, summary)


def _warm_up(system: Any, items: Sequence[EvalItem], tries: int = 3) -> None:
    """One untimed synthesis (lazy loading, compilation, caches). An item that fails here fails
    again, recorded, when it is scored; so try the next one instead of stopping the run."""
    for item in items[:tries]:
        try:
            system.synthesize(item.text, item.prompt)
            return
        except EvalDependencyError:
            raise
        except Exception:  # noqa: S112 - reported per item later
            continue


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def default_run_dir(root: str | Path = "runs/eval") -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")

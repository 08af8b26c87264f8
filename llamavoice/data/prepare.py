"""Turn a corpus into a clean training folder: validated, resampled, trimmed, with statistics.

``prepare(source, out_dir)`` writes::

    out_dir/wavs/<speaker>/<utt>.wav   16-bit PCM at the model's sample rate, silence trimmed
    out_dir/manifest.jsonl             the kept utterances (the training split with --val-fraction)
    out_dir/val.jsonl                  validation utterances (only with val_fraction > 0)
    out_dir/skipped.jsonl              every rejected utterance with its reason and details
    out_dir/stats.json                 counts, hours per speaker, duration percentiles, skip counts
    out_dir/durations.png              histogram of durations (needs matplotlib)

Each utterance is checked in this order and rejected with the first reason that applies:
``empty_text``, ``missing_audio``, ``corrupt_audio``, ``too_short``/``too_long``, ``silent``,
``clipped``. Lengths are judged after trimming leading/trailing silence, since that is the audio
the model trains on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llamavoice.audio import clipping_ratio, is_silent, load_audio, resample, rms_dbfs, save_audio, trim_silence
from llamavoice.data.formats import SourceItem, probe, scan_dataset
from llamavoice.data.manifest import DatasetError, ManifestEntry, write_manifest
from llamavoice.errors import AudioError

log = logging.getLogger(__name__)

SKIP_REASONS = ("empty_text", "missing_audio", "corrupt_audio", "too_short", "too_long", "silent", "clipped")

# Files this many times longer than max_seconds are rejected from the header alone: trimming only
# removes leading/trailing silence, and decoding an hour-long file just to reject it wastes memory.
_LONG_GUARD = 3.0


@dataclass
class PrepareOptions:
    sample_rate: int = 24000
    min_seconds: float = 0.5
    max_seconds: float = 20.0
    silence_dbfs: float = -60.0  # overall RMS below this: the clip is silent
    max_clipping_ratio: float = 0.001  # fraction of samples at full scale above which a clip is rejected
    trim_db: float = -40.0  # trim_silence threshold, relative to the loudest 10 ms frame
    trim_pad_ms: float = 50.0


@dataclass
class PrepareReport:
    """What :func:`prepare` did. ``skipped`` counts rejections per reason."""

    out_dir: Path
    manifest: Path
    val_manifest: Path | None
    kept: int
    val: int
    skipped: dict[str, int]
    hours: float
    stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"kept {self.kept} utterances ({self.hours:.2f} h) -> {self.manifest}"]
        if self.val_manifest is not None:
            lines.append(f"validation: {self.val} utterances -> {self.val_manifest}")
        total = sum(self.skipped.values())
        if total:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.skipped.items() if n)
            lines.append(f"skipped {total} ({reasons}); details in {self.out_dir / 'skipped.jsonl'}")
        else:
            lines.append("skipped 0")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _reject(reason: str, detail: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "detail": detail}


def check_and_convert(item: SourceItem, out_path: str | None, opts: PrepareOptions) -> dict[str, Any]:
    """Validate one utterance and, if it passes and ``out_path`` is given, write the converted audio.

    Returns ``{"ok": True, "duration", "source_rate"}`` or ``{"ok": False, "reason", "detail"}``.
    """
    if not item.text.strip():
        return _reject("empty_text", "the transcript is empty")
    if not item.audio or not Path(item.audio).is_file():
        return _reject("missing_audio", f"audio file not found: {item.audio or '(none listed)'}")
    try:
        raw_seconds, rate = probe(item.audio)
    except AudioError as exc:
        return _reject("corrupt_audio", str(exc))
    if raw_seconds < opts.min_seconds:
        return _reject("too_short", f"{raw_seconds:.2f} s, need at least {opts.min_seconds:g} s")
    if raw_seconds > _LONG_GUARD * opts.max_seconds:
        return _reject("too_long", f"{raw_seconds:.1f} s, at most {opts.max_seconds:g} s allowed")
    try:
        audio, rate = load_audio(item.audio)
    except AudioError as exc:
        return _reject("corrupt_audio", str(exc))
    if is_silent(audio, opts.silence_dbfs):
        return _reject("silent", f"level {rms_dbfs(audio):.1f} dBFS is below {opts.silence_dbfs:g} dBFS")
    clipped = clipping_ratio(audio)
    if clipped > opts.max_clipping_ratio:
        return _reject("clipped", f"{100 * clipped:.2f}% of samples at full scale "
                                  f"(limit {100 * opts.max_clipping_ratio:.2f}%)")
    audio = resample(audio, rate, opts.sample_rate)
    audio = trim_silence(audio, opts.sample_rate, threshold_db=opts.trim_db, pad_ms=opts.trim_pad_ms)
    seconds = audio.shape[0] / opts.sample_rate
    if seconds < opts.min_seconds:
        return _reject("too_short", f"{seconds:.2f} s after trimming silence, need at least {opts.min_seconds:g} s")
    if seconds > opts.max_seconds:
        return _reject("too_long", f"{seconds:.2f} s after trimming silence, at most {opts.max_seconds:g} s allowed")
    if out_path is not None:
        try:
            save_audio(out_path, audio, opts.sample_rate)
        except AudioError as exc:
            raise DatasetError(f"cannot write prepared audio: {exc}") from exc
    return {"ok": True, "duration": seconds, "source_rate": rate}


def _job(args: tuple[SourceItem, str, PrepareOptions]) -> dict[str, Any]:
    return check_and_convert(*args)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; torch's own threads would oversubscribe


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str, fallback: str) -> str:
    name = _UNSAFE.sub("_", name).strip("._")
    return name[:100] or fallback


def _output_names(items: list[SourceItem]) -> list[str]:
    """Unique relative paths ``wavs/<speaker>/<utt>.wav``, stable for a given source."""
    used: set[str] = set()
    names = []
    for i, item in enumerate(items):
        stem = Path(item.audio).name if item.audio else ""
        for ext in (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
        base = f"wavs/{_safe(item.speaker, 'speaker')}/{_safe(stem, f'utt{i:06d}')}"
        name, n = f"{base}.wav", 1
        while name.lower() in used:
            name, n = f"{base}_{n}.wav", n + 1
        used.add(name.lower())
        names.append(name)
    return names


def split_validation(entries: list[ManifestEntry], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (train, val), per speaker, keeping at least two utterances of a speaker on each
    side it appears on (a prompt must come from another utterance of the same speaker)."""
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {fraction}")
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        by_speaker[e.speaker].append(i)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for speaker in sorted(by_speaker):
        idx = by_speaker[speaker]
        k = int(np.floor(len(idx) * fraction + 0.5))
        if 0 < k < 2:
            k = 2
        if len(idx) - k < 2:
            k = 0
        if k:
            val.extend(int(i) for i in rng.choice(idx, size=k, replace=False))
    val_set = set(val)
    return [i for i in range(len(entries)) if i not in val_set], sorted(val_set)


def duration_stats(entries: list[ManifestEntry]) -> dict[str, Any]:
    d = np.array([e.duration for e in entries], dtype=np.float64)
    speakers: dict[str, dict[str, float]] = {}
    for e in entries:
        s = speakers.setdefault(e.speaker, {"count": 0, "hours": 0.0})
        s["count"] += 1
        s["hours"] += e.duration / 3600
    for s in speakers.values():
        s["hours"] = round(s["hours"], 4)
    pct = {}
    if len(d):
        pct = {"min": d.min(), "mean": d.mean(), "max": d.max()}
        pct.update({f"p{p}": np.percentile(d, p) for p in (5, 25, 50, 75, 95)})
    return {
        "count": len(entries),
        "hours": round(float(d.sum()) / 3600, 4),
        "num_speakers": len(speakers),
        "duration_seconds": {k: round(float(v), 3) for k, v in pct.items()},
        "speakers": dict(sorted(speakers.items())),
    }


def _plot_durations(durations: list[float], path: Path) -> str | None:
    """Write a histogram PNG; returns a note instead when matplotlib is unavailable."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: durations.png was not written (pip install matplotlib)"
    # The object API with an explicit Agg canvas: no global backend switch, no display needed.
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(durations, bins=min(50, max(5, len(durations) // 5)), color="#4a7ab5")
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("utterances")
    ax.set_title(f"{len(durations)} utterances, {sum(durations) / 3600:.2f} h")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return None


def prepare(
    source: str | Path,
    out_dir: str | Path,
    format: str = "auto",
    sample_rate: int = 24000,
    min_seconds: float = 0.5,
    max_seconds: float = 20.0,
    workers: int = 1,
    val_fraction: float = 0.0,
    seed: int = 0,
    max_clipping_ratio: float = 0.001,
    silence_dbfs: float = -60.0,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Validate, resample and trim a corpus into ``out_dir`` (see the module docstring)."""
    if not 0 < min_seconds < max_seconds:
        raise DatasetError(f"need 0 < min_seconds < max_seconds, got {min_seconds} and {max_seconds}")
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise DatasetError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source, out_dir = Path(source), Path(out_dir)
    src_dir = (source if source.is_dir() else source.parent).resolve()
    if out_dir.resolve() == src_dir:
        raise DatasetError(
            f"the output folder {out_dir} is the source folder; choose a new folder for the prepared data"
        )
    if (out_dir / "manifest.jsonl").exists() and not overwrite:
        raise DatasetError(f"{out_dir} already holds a prepared dataset (manifest.jsonl); "
                           "choose another folder or pass overwrite=True (--overwrite)")
    opts = PrepareOptions(sample_rate, min_seconds, max_seconds, silence_dbfs, max_clipping_ratio)

    format_name, items = scan_dataset(source, format)
    if not items:
        raise DatasetError(f"{source}: no utterances found in the {format_name} layout")
    names = _output_names(items)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(item, str(out_dir / name), opts) for item, name in zip(items, names, strict=True)]

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        def tqdm(it, **_kw):
            return it
    bar = {"total": len(jobs), "desc": "prepare", "unit": "utt", "disable": None if progress else True}
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP use can deadlock
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            results = list(tqdm(pool.map(_job, jobs, chunksize=8), **bar))
    else:
        results = [_job(j) for j in tqdm(jobs, **bar)]

    kept: list[ManifestEntry] = []
    skipped_rows = []
    reasons: Counter[str] = Counter()
    upsampled = 0
    for item, name, res in zip(items, names, results, strict=True):
        if res["ok"]:
            kept.append(ManifestEntry(str((out_dir / name).absolute()), item.text.strip(), item.speaker,
                                      round(res["duration"], 4), sample_rate, item.language))
            upsampled += res["source_rate"] < sample_rate
        else:
            reasons[res["reason"]] += 1
            skipped_rows.append({"audio": item.audio, "text": item.text, "speaker": item.speaker,
                                 "reason": res["reason"], "detail": res["detail"], "source": item.source})
    with (out_dir / "skipped.jsonl").open("w", encoding="utf-8") as f:
        for row in skipped_rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    notes = []
    if not kept:
        raise DatasetError(
            f"every utterance of {source} was rejected ({dict(reasons)}); see {out_dir / 'skipped.jsonl'}"
        )
    train_idx, val_idx = split_validation(kept, val_fraction, seed)
    if val_fraction > 0 and not val_idx:
        notes.append("no validation split: no speaker has enough utterances to give two to validation and keep two")
    manifest = write_manifest(out_dir / "manifest.jsonl", [kept[i] for i in train_idx])
    val_manifest = write_manifest(out_dir / "val.jsonl", [kept[i] for i in val_idx]) if val_idx else None
    if upsampled:
        notes.append(f"{upsampled} utterance(s) were upsampled from a lower rate than {sample_rate} Hz: "
                     "they lack high frequencies the model will learn as part of those voices")
    singles = [s for s, c in Counter(e.speaker for e in kept).items() if c < 2]
    if singles:
        notes.append(f"{len(singles)} speaker(s) have a single utterance; training leaves them out "
                     "(prompts come from another utterance of the same speaker)")
    plot_note = _plot_durations([e.duration for e in kept], out_dir / "durations.png")
    if plot_note:
        notes.append(plot_note)

    stats = {
        "source": str(source), "format": format_name, "sample_rate": sample_rate,
        **duration_stats(kept),
        "splits": {"train": len(train_idx), "val": len(val_idx)},
        "skipped": {r: reasons.get(r, 0) for r in SKIP_REASONS},
        "skipped_total": sum(reasons.values()),
        "upsampled": int(upsampled),
        "settings": {"min_seconds": min_seconds, "max_seconds": max_seconds, "silence_dbfs": silence_dbfs,
                     "max_clipping_ratio": max_clipping_ratio, "trim_db": opts.trim_db, "val_fraction": val_fraction,
                     "seed": seed},
        "notes": notes,
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return PrepareReport(out_dir, manifest, val_manifest, len(train_idx), len(val_idx),
                         stats["skipped"], stats["hours"], stats, notes)

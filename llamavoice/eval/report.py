"""The figures of an evaluation run: per-system (and per-speaker) aggregates of the scored rows,
where they were measured, and the report files (a Markdown table, a plot, JSON without NaN)."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], dtype=np.float64)
    return arr


def finite_mean(values: Iterable[Any]) -> float | None:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else None


def _pct(values: Iterable[Any], q: float) -> float | None:
    arr = _finite(values)
    return float(np.percentile(arr, q)) if arr.size else None


def error_rate(rows: Sequence[dict], num: str, den: str) -> float | None:
    """Corpus-level rate: errors summed over the rows that scored, over their summed reference length."""
    ok = [r for r in rows if not r["error"] and math.isfinite(r[den]) and r[den] > 0]
    total = sum(r[den] for r in ok)
    return float(sum(r[num] for r in ok) / total) if total else None


def paired_wins(rows: Sequence[dict], system: str, rival: str, field: str = "sim_o") -> dict[str, Any]:
    """How often ``system`` scores higher than ``rival`` on the same item (e.g. a cloned voice against
    the model's default voice, both compared with the speaker's reference clip). Items where either
    failed or has no score are left out and counted."""
    def scores(name: str) -> dict[str, float]:
        return {r["item_id"]: r[field] for r in rows if r["system"] == name and not r["error"]
                and isinstance(r[field], (int, float)) and math.isfinite(r[field])}

    ours, theirs = scores(system), scores(rival)
    common = [item for item in ours if item in theirs]
    wins = sum(1 for item in common if ours[item] > theirs[item])
    items = {r["item_id"] for r in rows if r["system"] in (system, rival)}
    return {"system": system, "rival": rival, "field": field, "wins": wins, "compared": len(common),
            "left_out": len(items) - len(common), "share": wins / len(common) if common else None}


def _group_stats(rows: Sequence[dict]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "failed": sum(1 for r in rows if r["error"]),
        # Corpus-level rates: all errors over all reference words (long sentences weigh more).
        "wer": error_rate(rows, "word_errors", "words"),
        "cer": error_rate(rows, "char_errors", "chars"),
        "wer_utt_mean": finite_mean(r["wer"] for r in rows),
        "sim_o": finite_mean(r["sim_o"] for r in rows),
        "sim_prompt": finite_mean(r["sim_prompt"] for r in rows),
        "mos": finite_mean(r["mos"] for r in rows),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-system aggregate figures (and per speaker) from per-utterance rows."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["system"] for r in rows):
        sys_rows = [r for r in rows if r["system"] == name]
        stats = _group_stats(sys_rows)
        stats.update({
            "audio_s": float(sum(r["audio_s"] for r in sys_rows if math.isfinite(r["audio_s"]))),
            "rtf_p50": _pct((r["rtf"] for r in sys_rows), 50), "rtf_p95": _pct((r["rtf"] for r in sys_rows), 95),
            "ttfa_p50_s": _pct((r["ttfa_s"] for r in sys_rows), 50),
            "ttfa_p95_s": _pct((r["ttfa_s"] for r in sys_rows), 95),
        })
        stats["per_speaker"] = {spk: _group_stats([r for r in sys_rows if r["speaker"] == spk])
                                for spk in sorted({r["speaker"] for r in sys_rows})}
        out[name] = stats
    return out


def device_info() -> dict[str, Any]:
    """Where the speed figures were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if hasattr(os, "getloadavg"):  # on a shared machine, speed depends on what else is running
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(summary: dict[str, Any]) -> str:
    """Systems x headline metrics, then per-speaker WER / SIM-o."""
    head = "| system | n | failed | WER % | CER % | SIM-o | SIM-prompt | DistillMOS | RTF p50 | RTF p95 | " \
           "TTFA p50 s | TTFA p95 s |\n|" + " --- |" * 12 + "\n"
    lines = []
    for name, s in summary.items():
        pct = lambda v: None if v is None else 100 * v  # noqa: E731
        lines.append(f"| {name} | {s['n']} | {s['failed']} | {_fmt(pct(s['wer']), 1)} | {_fmt(pct(s['cer']), 1)} | "
                     f"{_fmt(s['sim_o'])} | {_fmt(s['sim_prompt'])} | {_fmt(s['mos'], 2)} | {_fmt(s['rtf_p50'])} | "
                     f"{_fmt(s['rtf_p95'])} | {_fmt(s['ttfa_p50_s'])} | {_fmt(s['ttfa_p95_s'])} |")
    text = head + "\n".join(lines) + "\n"
    speakers = sorted({spk for s in summary.values() for spk in s["per_speaker"]})
    if speakers:
        text += "\nPer speaker (WER % / SIM-o):\n\n| speaker | " + " | ".join(summary) + " |\n|" + \
            " --- |" * (len(summary) + 1) + "\n"
        for spk in speakers:
            cells = []
            for s in summary.values():
                p = s["per_speaker"].get(spk)
                cells.append("–" if p is None else
                             f"{_fmt(None if p['wer'] is None else 100 * p['wer'], 1)} / {_fmt(p['sim_o'])}")
            text += f"| {spk} | " + " | ".join(cells) + " |\n"
    return text


def plot_summary(summary: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars of WER and SIM-o per speaker for every system; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    speakers = sorted({spk for s in summary.values() for spk in s["per_speaker"]})
    systems = list(summary)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.35 * len(speakers) * len(systems) + 2), 7), sharex=True)
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(speakers))
    for ax, key, label in ((axes[0], "wer", "WER (%)"), (axes[1], "sim_o", "SIM-o (cosine)")):
        for k, name in enumerate(systems):
            vals = []
            for spk in speakers:
                v = summary[name]["per_speaker"].get(spk, {}).get(key)
                vals.append(np.nan if v is None else (100 * v if key == "wer" else v))
            ax.bar(x + (k - (len(systems) - 1) / 2) * width, vals, width, label=name)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_ylim(0, 1)
    axes[1].set_xticks(x, speakers, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    axes[0].set_title("WER and SIM-o per speaker")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj

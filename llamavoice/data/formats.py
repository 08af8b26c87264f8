"""Readers for common corpus layouts, turning them into :class:`ManifestEntry` lists.

Supported layouts (``format=`` names):

- ``ljspeech``: ``metadata.csv`` (``id|text|normalized text``, no header) and ``wavs/<id>.wav``;
  one speaker, ``"ljspeech"``. The normalized column is used when present (numbers spelled out).
- ``libritts`` (also LibriTTS-R): ``<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt``,
  falling back to ``<utt>.original.txt``; the folder may be the corpus root or one subset.
- ``vctk``: ``txt/<speaker>/<utt>.txt`` and ``wav48*/<speaker>/<utt>*.wav|flac`` (``_mic1`` is
  preferred over ``_mic2`` when VCTK 0.92 ships both).
- ``manifest``: a JSONL file (``audio``, ``text``, ``speaker``, optional ``language``; other keys are
  ignored) or a CSV/TSV with a header ``audio,text,speaker[,language]``. Relative audio paths are
  relative to the file's folder.

Reading is two steps: ``scan_*`` lists what the corpus *claims* (:class:`SourceItem`, no audio
opened), then :func:`read_dataset` probes each file's duration and rate with ``soundfile.info``
(header only, fast). :mod:`llamavoice.data.prepare` uses the scan directly so that it can report
missing or corrupt files instead of silently dropping them.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from llamavoice.data.manifest import DatasetError, ManifestEntry
from llamavoice.errors import AudioError
from llamavoice.jsonl import iter_jsonl

log = logging.getLogger(__name__)

FORMATS = ("ljspeech", "libritts", "vctk", "manifest")
_ALIASES = {"libritts-r": "libritts", "librittsr": "libritts", "lj": "ljspeech", "jsonl": "manifest",
            "csv": "manifest"}
_AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclass
class SourceItem:
    """One utterance as a corpus lists it. ``audio`` is "" when no audio file could be found;
    ``source`` says where the item came from (for reports)."""

    audio: str
    text: str
    speaker: str
    language: str = "en"
    source: str = ""


# --------------------------------------------------------------------------------------------
# Scanners (no audio opened)
# --------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1").strip()  # old VCTK releases are not all UTF-8
    except OSError as exc:
        raise DatasetError(f"cannot read transcript {path}: {exc.strerror or exc}") from exc


def scan_ljspeech(root: str | Path, speaker: str = "ljspeech") -> list[SourceItem]:
    root = Path(root)
    meta = root / "metadata.csv" if root.is_dir() else root
    root = meta.parent
    if not meta.is_file():
        raise DatasetError(f"LJSpeech layout: {meta} not found (expected metadata.csv and wavs/)")
    items = []
    with meta.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            # Not the csv module: LJSpeech text contains unbalanced quotes that csv would swallow.
            fields = line.split("|")
            if len(fields) < 2 or not fields[0].strip():
                raise DatasetError(f"{meta} line {number}: expected 'id|text|normalized text', got {line[:80]!r}")
            uid = fields[0].strip()
            text = fields[2].strip() if len(fields) > 2 and fields[2].strip() else fields[1].strip()
            audio = ""
            for candidate in (root / "wavs" / f"{uid}.wav", root / "wavs" / uid, root / "wavs" / f"{uid}.flac"):
                if candidate.is_file():
                    audio = str(candidate.absolute())
                    break
            items.append(SourceItem(audio or str((root / "wavs" / f"{uid}.wav").absolute()), text, speaker,
                                    source=f"{meta} line {number}"))
    return items


def scan_libritts(root: str | Path) -> list[SourceItem]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"LibriTTS layout: {root} is not a folder")
    transcripts: dict[Path, Path] = {}  # audio stem path -> transcript (normalized wins)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            for suffix, rank in ((".normalized.txt", 0), (".original.txt", 1)):
                if name.endswith(suffix):
                    stem = Path(dirpath) / name[: -len(suffix)]
                    prev = transcripts.get(stem)
                    if prev is None or (rank == 0 and prev.name.endswith(".original.txt")):
                        transcripts[stem] = Path(dirpath) / name
    items = []
    for stem in sorted(transcripts):
        audio = next((stem.with_name(stem.name + ext) for ext in (".wav", ".flac") if
                      stem.with_name(stem.name + ext).is_file()), stem.with_name(stem.name + ".wav"))
        # <speaker>/<chapter>/<utt>; when given a chapter folder, the utterance id starts with the speaker.
        rel = stem.relative_to(root)
        speaker = rel.parts[-3] if len(rel.parts) >= 3 else stem.name.split("_")[0]
        items.append(SourceItem(str(audio.absolute()), _read_text(transcripts[stem]), speaker,
                                source=str(transcripts[stem])))
    return items


def _mic_key(name: str) -> tuple[str, int]:
    stem = name.rsplit(".", 1)[0]
    for mic, rank in (("_mic1", 0), ("_mic2", 1)):
        if stem.endswith(mic):
            return stem[: -len(mic)], rank
    return stem, 0


def scan_vctk(root: str | Path) -> list[SourceItem]:
    root = Path(root)
    txt_root = root / "txt"
    audio_roots = sorted(p for p in root.glob("wav48*") if p.is_dir())
    if not txt_root.is_dir() or not audio_roots:
        raise DatasetError(f"VCTK layout: expected {txt_root} and a wav48*/ folder in {root}")
    audio: dict[tuple[str, str], tuple[int, int, Path]] = {}
    for order, aroot in enumerate(audio_roots):
        for spk_dir in aroot.iterdir():
            if not spk_dir.is_dir():
                continue
            for f in spk_dir.iterdir():
                if f.suffix.lower() not in _AUDIO_EXTS:
                    continue
                utt, mic = _mic_key(f.name)
                key = (spk_dir.name, utt)
                if key not in audio or (mic, order) < audio[key][:2]:
                    audio[key] = (mic, order, f)
    items = []
    for spk_dir in sorted(p for p in txt_root.iterdir() if p.is_dir()):
        for txt in sorted(spk_dir.glob("*.txt")):
            found = audio.get((spk_dir.name, txt.stem))
            items.append(SourceItem(str(found[2].absolute()) if found else "", _read_text(txt), spk_dir.name,
                                    source=str(txt)))
    return items


def _resolve(base: Path, audio: str) -> str:
    p = Path(audio).expanduser()
    return str(p if p.is_absolute() else (base / p).absolute())


def scan_manifest(path: str | Path) -> list[SourceItem]:
    """A JSONL or CSV/TSV list of utterances (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        found = [path / "manifest.jsonl"] if (path / "manifest.jsonl").is_file() else sorted(
            p for p in path.iterdir() if p.suffix in (".jsonl", ".csv", ".tsv"))
        if len(found) != 1:
            raise DatasetError(f"{path}: expected manifest.jsonl or exactly one .jsonl/.csv/.tsv file, found "
                               f"{[p.name for p in found] or 'none'}")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    base = path.absolute().parent
    items = []
    try:
        if path.suffix == ".jsonl":
            for number, obj in iter_jsonl(path, DatasetError):
                items.append(_item_from_row(obj, f"{path} line {number}", base))
        else:
            with path.open(encoding="utf-8", newline="") as f:
                header = f.readline()
                f.seek(0)
                delimiter = "\t" if path.suffix == ".tsv" else max(",|\t", key=header.count)
                reader = csv.DictReader(f, delimiter=delimiter)
                names = [n.strip() for n in (reader.fieldnames or [])]
                missing = [c for c in ("audio", "text", "speaker") if c not in names]
                if missing:
                    raise DatasetError(f"{path}: header must name columns audio,text,speaker[,language]; missing "
                                       f"{missing} in {names}")
                reader.fieldnames = names
                for number, row in enumerate(reader, start=2):
                    items.append(_item_from_row(row, f"{path} line {number}", base))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc}") from exc
    return items


def _item_from_row(obj: object, where: str, base: Path) -> SourceItem:
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected an object with audio, text, speaker")
    audio, text, speaker = obj.get("audio"), obj.get("text"), obj.get("speaker")
    if isinstance(speaker, int) and not isinstance(speaker, bool):
        speaker = str(speaker)
    for name, value in (("audio", audio), ("speaker", speaker)):
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: '{name}' must be a non-empty string, got {value!r}")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise DatasetError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    language = obj.get("language") or "en"
    return SourceItem(_resolve(base, audio.strip()), text.strip(), speaker.strip(), str(language), source=where)


_SCANNERS: dict[str, Callable[[Path], list[SourceItem]]] = {
    "ljspeech": scan_ljspeech,
    "libritts": scan_libritts,
    "vctk": scan_vctk,
    "manifest": scan_manifest,
}


# --------------------------------------------------------------------------------------------
# Detection, probing, reading
# --------------------------------------------------------------------------------------------


def _has_libritts_transcript(root: Path, max_depth: int = 5) -> bool:
    root_depth = len(root.parts)
    for dirpath, dirs, files in os.walk(root):
        if any(f.endswith((".normalized.txt", ".original.txt")) for f in files):
            return True
        if len(Path(dirpath).parts) - root_depth >= max_depth:
            dirs[:] = []
    return False


def detect_format(path: str | Path) -> str:
    """Guess the layout of a corpus folder or list file; one of :data:`FORMATS`."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix in (".jsonl", ".tsv"):
            return "manifest"
        if path.suffix == ".csv":
            first = path.open(encoding="utf-8", errors="replace").readline()
            return "manifest" if "audio" in first.lower() and "text" in first.lower() else "ljspeech"
        raise DatasetError(f"{path}: cannot tell the dataset format from a '{path.suffix}' file; "
                           "use a .jsonl or .csv list, or a corpus folder")
    if (path / "metadata.csv").is_file():
        return "ljspeech"
    if (path / "txt").is_dir() and any(p.is_dir() for p in path.glob("wav48*")):
        return "vctk"
    if (path / "manifest.jsonl").is_file():
        return "manifest"
    if _has_libritts_transcript(path):
        return "libritts"
    if len([p for p in path.iterdir() if p.suffix in (".jsonl", ".csv", ".tsv")]) == 1:
        return "manifest"
    raise DatasetError(
        f"cannot detect the dataset format of {path}: expected metadata.csv + wavs/ (LJSpeech), "
        "txt/ + wav48*/ (VCTK), <speaker>/<chapter>/*.normalized.txt (LibriTTS), or a manifest.jsonl/.csv; "
        f"pass format= one of {list(FORMATS)}"
    )


def normalize_format(format: str) -> str:
    name = _ALIASES.get(format.lower(), format.lower())
    if name != "auto" and name not in FORMATS:
        raise DatasetError(f"unknown dataset format '{format}'; choose auto or one of {list(FORMATS)}")
    return name


def scan_dataset(path: str | Path, format: str = "auto") -> tuple[str, list[SourceItem]]:
    """(format name, items) for a corpus, without opening any audio."""
    name = normalize_format(format)
    if name == "auto":
        name = detect_format(path)
    if not Path(path).exists():
        raise DatasetError(f"dataset not found: {path}")
    return name, _SCANNERS[name](Path(path))


def probe(path: str | Path) -> tuple[float, int]:
    """(duration seconds, sample rate) from the file header; :class:`AudioError` if unusable."""
    if not path or not Path(path).is_file():
        raise AudioError(f"audio file not found: {path or '(none)'}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioError(f"{path} is not a readable audio file ({exc})") from exc
    if info.samplerate <= 0 or info.frames <= 0:
        raise AudioError(f"audio file contains no samples: {path}")
    return info.frames / info.samplerate, int(info.samplerate)


def _probe_or_error(item: SourceItem) -> tuple[float, int] | AudioError:
    try:
        return probe(item.audio)
    except AudioError as exc:
        return exc


def read_dataset(path: str | Path, format: str = "auto", workers: int = 4) -> list[ManifestEntry]:
    """Entries of a corpus with durations and rates read from the file headers.

    Items whose audio is missing or unreadable are left out with a warning (use ``llamavoice
    prepare`` for a full validation report).
    """
    _, items = scan_dataset(path, format)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        probed = list(pool.map(_probe_or_error, items))
    entries, bad = [], []
    for item, result in zip(items, probed, strict=True):
        if isinstance(result, AudioError):
            bad.append(result)
        else:
            entries.append(ManifestEntry(item.audio, item.text, item.speaker, result[0], result[1], item.language))
    if bad:
        log.warning("%d of %d utterances in %s have missing or unreadable audio and are left out, e.g. %s",
                    len(bad), len(items), path, bad[0])
    return entries


def read_ljspeech(root: str | Path) -> list[ManifestEntry]:
    return read_dataset(root, "ljspeech")


def read_libritts(root: str | Path) -> list[ManifestEntry]:
    return read_dataset(root, "libritts")


def read_vctk(root: str | Path) -> list[ManifestEntry]:
    return read_dataset(root, "vctk")


def read_generic_manifest(path: str | Path) -> list[ManifestEntry]:
    return read_dataset(path, "manifest")

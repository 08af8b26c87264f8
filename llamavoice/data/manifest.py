"""The manifest: one JSON object per line, one line per utterance.

``{"audio": "wavs/p1/001.wav", "text": "...", "speaker": "p1", "duration": 2.41,
"sample_rate": 24000, "language": "en"}``

``audio`` is absolute or relative to the manifest's own folder, so a prepared corpus (manifest +
``wavs/``) can be moved or copied as one directory. :func:`read_manifest` resolves relative paths
to absolute ones; :func:`write_manifest` writes paths relative to the manifest's folder whenever
the audio lives under it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamavoice.errors import LlamaVoiceError
from llamavoice.jsonl import iter_jsonl


class DatasetError(LlamaVoiceError):
    """A dataset, manifest or data-preparation input is missing, malformed or unusable."""


@dataclass
class ManifestEntry:
    """One utterance. ``audio`` is an absolute path once read from a manifest."""

    audio: str
    text: str
    speaker: str
    duration: float  # seconds
    sample_rate: int  # of the file on disk
    language: str = "en"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REQUIRED = ("audio", "text", "speaker", "duration", "sample_rate")


def _parse_entry(obj: Any, where: str, base: Path) -> ManifestEntry:
    """Validate one decoded JSON line; ``where`` names the file and line for error messages."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise DatasetError(f"{where}: missing field(s) {missing}; every line needs {list(_REQUIRED)}")
    audio, text, speaker = obj["audio"], obj["text"], obj["speaker"]
    duration, rate, language = obj["duration"], obj["sample_rate"], obj.get("language", "en")
    if not isinstance(audio, str) or not audio.strip():
        raise DatasetError(f"{where}: 'audio' must be a non-empty path string, got {audio!r}")
    if not isinstance(text, str):
        raise DatasetError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    # Numeric speaker ids (LibriTTS) are common in hand-written manifests; they mean the same string.
    if isinstance(speaker, int) and not isinstance(speaker, bool):
        speaker = str(speaker)
    if not isinstance(speaker, str) or not speaker.strip():
        raise DatasetError(f"{where}: 'speaker' must be a non-empty string, got {speaker!r}")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) \
            or duration <= 0:
        raise DatasetError(f"{where}: 'duration' must be a positive number of seconds, got {duration!r}")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise DatasetError(f"{where}: 'sample_rate' must be a positive integer, got {rate!r}")
    if not isinstance(language, str) or not language:
        raise DatasetError(f"{where}: 'language' must be a non-empty string, got {language!r}")
    path = Path(audio).expanduser()
    if not path.is_absolute():
        path = base / path
    return ManifestEntry(str(path), text, speaker, float(duration), rate, language)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read a JSONL manifest. Relative audio paths are resolved against the manifest's folder.

    Blank lines are skipped. Any malformed line raises :class:`DatasetError` naming the file and
    line number. Audio files are not opened here (that is :mod:`llamavoice.data.prepare`'s job).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path}")
    base = Path(os.path.abspath(path)).parent
    entries: list[ManifestEntry] = []
    try:
        for number, obj in iter_jsonl(path, DatasetError):
            entries.append(_parse_entry(obj, f"{path} line {number}", base))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"manifest {path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    return entries


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    """Write entries as JSONL (UTF-8, one object per line), atomically.

    Audio paths under the manifest's folder are written relative to it (portable corpus); others
    stay absolute. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # abspath, not resolve(): following symlinked audio would break the relative paths.
    base = Path(os.path.abspath(path)).parent
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for entry in entries:
                d = entry.to_dict()
                audio = Path(entry.audio)
                if audio.is_absolute():
                    try:
                        d["audio"] = Path(os.path.abspath(audio)).relative_to(base).as_posix()
                    except ValueError:
                        d["audio"] = str(audio)
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write manifest {path}: {exc.strerror or exc}") from exc
    return path

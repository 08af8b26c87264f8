"""The user's voice library: cloned voices that the server and ``llamavoice voices`` share.

Location: ``$LLAMAVOICE_HOME/voices`` when ``LLAMAVOICE_HOME`` is set, else the platform's user
data directory (``platformdirs``: ``~/.local/share/llamavoice/voices`` on Linux); ``--voices-dir``
overrides both. One folder per voice::

    <id>/meta.json                 name, source file name, seconds, creation time
    <id>/clip.flac                 the reference clip as uploaded (mono, its own rate)
    <id>/<model_id>.safetensors    the encoded voice for one model (Voice.save)

The clip is kept so that a voice still works after the model changes: a model that finds no
encoding of its own (its fingerprint differs) encodes the clip again and stores the result.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from llamavoice.errors import AudioError, ConfigError

if TYPE_CHECKING:
    from llamavoice.inference.api import TTS
    from llamavoice.inference.voice import Voice

HOME_ENV = "LLAMAVOICE_HOME"
MAX_NAME = 64


class VoiceExistsError(ConfigError):
    """A voice of that id is already in the library."""


def default_home() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_data_dir
    except ImportError as exc:
        raise ConfigError(f'the voice library needs platformdirs: pip install "llamavoice[server]", or set '
                          f"{HOME_ENV} to a folder") from exc
    return Path(user_data_dir("llamavoice", appauthor=False))


def default_voices_dir() -> Path:
    return default_home() / "voices"


def voice_id(name: str) -> str:
    """The id of a voice name: lower case, runs of anything but [a-z0-9_-] become one '-'."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")
    return slug[:MAX_NAME]


@dataclass
class LibraryVoice:
    id: str
    name: str
    source: str  # the uploaded file's name
    seconds: float  # clip length
    created: float  # unix time


class VoiceLibrary:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_voices_dir()

    def list(self) -> list[LibraryVoice]:
        if not self.root.is_dir():
            return []
        voices = [self.get(p.name) for p in sorted(self.root.iterdir()) if p.is_dir()]
        return [v for v in voices if v is not None]

    def get(self, vid: str) -> LibraryVoice | None:
        if not vid or vid != voice_id(vid):
            return None  # not an id (and never a path outside the library)
        meta = self.root / vid / "meta.json"
        try:
            data = json.loads(meta.read_text())
            return LibraryVoice(**{k: data[k] for k in ("id", "name", "source", "seconds", "created")})
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or half-written: not a voice

    def add(self, name: str, audio: np.ndarray, sample_rate: int, source: str = "", voice: Voice | None = None,
            model_id: str = "") -> LibraryVoice:
        """Store a clip (mono float32) under ``name``; ``voice``: its encoding by model ``model_id``."""
        name = name.strip()
        vid = voice_id(name)
        if not vid or len(name) > MAX_NAME:
            raise ConfigError(f"voice name {name!r} is not usable; give 1-{MAX_NAME} characters with letters or digits")
        if (self.root / vid).exists():
            raise VoiceExistsError(f"a voice with id {vid!r} already exists; delete it first or pick another name")
        entry = LibraryVoice(vid, name, Path(source).name, round(len(audio) / sample_rate, 3), time.time())
        self.root.mkdir(parents=True, exist_ok=True)
        # Written in a temporary folder and renamed: a crash never leaves a half voice behind.
        tmp = Path(tempfile.mkdtemp(prefix=f".{vid}-", dir=self.root))
        try:
            sf.write(str(tmp / "clip.flac"), np.asarray(audio, dtype=np.float32), sample_rate, format="FLAC")
            if voice is not None and model_id:
                voice.save(tmp / f"{model_id}.safetensors")
            (tmp / "meta.json").write_text(json.dumps(asdict(entry), indent=1))
            os.replace(tmp, self.root / vid)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if (self.root / vid).exists():
                raise VoiceExistsError(f"a voice with id {vid!r} already exists") from exc
            raise AudioError(f"could not store voice {name!r} in {self.root}: {exc.strerror or exc}") from exc
        return entry

    def remove(self, vid: str) -> bool:
        if self.get(vid) is None:
            return False
        # Rename first so that readers never see a half-deleted voice.
        trash = self.root / f".deleted-{vid}-{time.time_ns()}"
        os.replace(self.root / vid, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def load(self, vid: str, tts: TTS) -> Voice:
        """The voice for ``tts``'s model: its stored encoding, or the clip encoded now (and stored)."""
        from llamavoice.inference.voice import Voice

        entry = self.get(vid)
        if entry is None:
            raise AudioError(f"voice {vid!r} is not in the library {self.root}")
        folder = self.root / vid
        encoded = folder / f"{tts.model_id}.safetensors"
        if encoded.is_file():
            voice = Voice.load(encoded)
        else:
            voice = tts.encode_voice(folder / "clip.flac", name=entry.name)
            try:
                voice.save(encoded)
            except AudioError:
                pass  # a read-only library still works, it just encodes again next time
        voice.name = entry.name
        return voice

"""Voices: the prompt latents of an encoded clip (:class:`Voice`, saved with safetensors) and the
library that resolves what a caller passes as a voice (:class:`VoiceLibrary`).

A voice is the flow-space latent sequence u (T, D) of a reference clip (3-15 s, any format,
rate or channel count; its transcript is not needed because the LM is trained with prompts from
*another* utterance of the speaker). It is encoded once and reused for every sentence.

Files are always safetensors, whatever their extension (``voice.pt`` included): loading one never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from llamavoice.errors import AudioError, CheckpointError

VOICE_FORMAT = "llamavoice-voice"
VOICE_FORMAT_VERSION = "1"


@dataclass
class Voice:
    latents: Tensor  # (T, D) fp32 flow-space latents u of the prompt
    name: str = ""
    source: str = ""  # where it came from: a file name, "random:SEED", ...
    duration: float = 0.0  # seconds of prompt audio
    model_id: str = ""  # fingerprint of the VAE encoder + flow that made it
    _device_copies: dict = field(default_factory=dict, repr=False, compare=False)
    # KV caches of this voice's [prompt][SEP] prefix, one per model/precision that used it:
    # computed on the first sentence, reused for every later one.
    prefixes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.latents.shape[1])

    def on(self, device: torch.device) -> Tensor:
        """The latents on ``device``, copied there once and reused for every sentence."""
        key = str(device)
        if key not in self._device_copies:
            self._device_copies[key] = self.latents.to(device=device, dtype=torch.float32)
        return self._device_copies[key]

    def save(self, path: str | Path) -> Path:
        """Write the voice as safetensors (whatever the extension), atomically: a failed write
        leaves an existing file as it was."""
        from llamavoice.audio.io import atomic_output

        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(path) as tmp:
                save_file(
                    {"latents": self.latents.detach().float().cpu().contiguous()},
                    str(tmp),
                    metadata={
                        "format": VOICE_FORMAT,
                        "format_version": VOICE_FORMAT_VERSION,
                        "name": self.name,
                        "source": self.source,
                        "duration": repr(float(self.duration)),
                        "model_id": self.model_id,
                    },
                )
        except OSError as exc:
            raise AudioError(f"could not write voice file {path}: {exc.strerror or exc}") from exc
        except (SafetensorError, RuntimeError, ValueError) as exc:  # safetensors' own I/O errors
            raise AudioError(f"could not write voice file {path}: {exc}") from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> Voice:
        """Read a voice written by :meth:`save`; anything else raises a one-line error."""
        path = Path(path)
        if not path.is_file():
            raise AudioError(f"voice file not found: {path}")
        if not is_voice_file(path):
            raise CheckpointError(
                f"{path} is not a LlamaVoice voice file; create one with `llamavoice encode CLIP -o {path.name}`"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                shape = f.get_slice("latents").get_shape()
                if len(shape) != 2 or shape[0] > _MAX_FILE_FRAMES or shape[1] > 4096:
                    raise CheckpointError(f"voice file {path} holds latents of shape {tuple(shape)}; expected "
                                          "(frames, latent_dim) of a 3-15 s clip: encode the clip again")
                latents = f.get_tensor("latents")
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"voice file {path} is corrupt ({exc}); encode the clip again") from exc
        version = meta.get("format_version", "?")
        if version.split(".")[0] != VOICE_FORMAT_VERSION:
            raise CheckpointError(
                f"voice file {path} has format version {version}; this llamavoice reads {VOICE_FORMAT_VERSION}. "
                "Encode the clip again."
            )
        if latents.dim() != 2 or not latents.is_floating_point():
            raise CheckpointError(f"voice file {path} holds latents of shape {tuple(latents.shape)}; expected (T, D)")
        check_latents(latents.float(), f"voice file {path}")
        try:
            duration = float(meta.get("duration", "0"))
        except ValueError:
            duration = 0.0
        return cls(
            latents=latents.float(),
            name=meta.get("name", "") or path.stem,
            source=meta.get("source", ""),
            duration=duration,
            model_id=meta.get("model_id", ""),
        )


# A voice prompt is 3-15 s of speech; encoding may add a frame of padding.
MIN_VOICE_SECONDS = 3.0
MAX_VOICE_SECONDS = 15.0
_MAX_FILE_FRAMES = 100_000  # checked before reading the tensor, whatever the model's frame rate


def check_latents(latents: Tensor, what: str, frame_rate: float | None = None) -> None:
    """Refuse prompt latents that would give NaN audio or unbounded work: non-finite values, no
    frames, or (given the model's ``frame_rate``) more than :data:`MAX_VOICE_SECONDS` of them."""
    if latents.dim() != 2 or latents.shape[0] == 0 or latents.shape[1] == 0:
        raise CheckpointError(f"{what} holds {tuple(latents.shape)} latents: a voice needs at least one frame; "
                              "encode the clip again")
    if not bool(torch.isfinite(latents).all()):
        raise CheckpointError(f"{what} holds NaN or infinite latents; encode the clip again")
    if frame_rate is not None:
        limit = math.ceil(MAX_VOICE_SECONDS * frame_rate) + 1
        if latents.shape[0] > limit:
            raise CheckpointError(
                f"{what} is {latents.shape[0] / frame_rate:.1f} s long ({latents.shape[0]} frames); a voice prompt "
                f"is at most {MAX_VOICE_SECONDS:g} s ({limit} frames): encode a shorter clip"
            )


def is_voice_file(path: Path) -> bool:
    """True if ``path`` is a safetensors file tagged as a LlamaVoice voice (reads the header only)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (size,) = struct.unpack("<Q", head)
            if size <= 0 or size > 10_000_000:
                return False
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == VOICE_FORMAT


def prompt_encoder_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights that map audio to prompt latents (VAE encoder and flow), so a
    voice can tell when it is used with a model that would read it differently."""
    h = hashlib.sha256()
    for part in (model.vae.encoder, model.flow):
        for name, tensor in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# The voice library of a loaded model
# --------------------------------------------------------------------------------------------

VOICES_DIR = "voices"  # <model>/voices/NAME.safetensors: the voices a model ships
DEFAULT_VOICE = "default"
VoiceLike = Union[None, str, Path, "Voice"]  # noqa: UP007 (a runtime alias: `|` needs 3.10 types)


@dataclass
class VoiceLibrary:
    """Resolves any accepted voice argument to a checked :class:`Voice`, caching by name/path:

    - ``None``: the model's default voice (``<model>/voices/default.safetensors``; without one, the
      random voice of seed 0, with a warning),
    - a name from ``<model>/voices/``, ``"random"`` (a voice made from a seed),
    - a path to a saved voice (safetensors, any extension) or to an audio clip (encoded once),
    - a :class:`Voice` (checked against the model).

    ``encode`` turns a clip file into a voice and ``invent`` makes the voice of a seed: both run
    the model, which the library does not hold."""

    model_dir: Path | None
    model_id: str  # prompt_encoder_fingerprint of the model
    latent_dim: int
    frame_rate: float
    encode: Callable[[Path], Voice]
    invent: Callable[[int], Voice]
    _cache: dict[str, Voice] = field(default_factory=dict, repr=False)

    def names(self) -> list[str]:
        """Names of the voices shipped in ``<model>/voices/``."""
        if self.model_dir is None or not (self.model_dir / VOICES_DIR).is_dir():
            return []
        return sorted(p.stem for p in (self.model_dir / VOICES_DIR).glob("*.safetensors"))

    def random(self, seed: int | None = None) -> Voice:
        """The voice of ``seed`` (None: a fresh seed), made once and then reused."""
        from llamavoice.inference.sampling import seed_or_fresh

        seed = seed_or_fresh(seed)
        key = f"random:{seed}"
        if key not in self._cache:
            self._cache[key] = self.invent(seed)
        return self._cache[key]

    def get(self, voice: VoiceLike, seed: int | None = None) -> Voice:
        # Warnings use stacklevel 4: here ← TTS.get_voice ← the TTS method ← the caller's line.
        if isinstance(voice, Voice):
            return self.check(voice)
        if voice is None:
            voice = DEFAULT_VOICE
            if DEFAULT_VOICE not in self.names():
                if "default:random" not in self._cache:
                    warnings.warn(
                        "this model ships no default voice (voices/default.safetensors); using the random voice "
                        "of seed 0. Pass a voice clip to clone a real voice.",
                        stacklevel=4,
                    )
                    self._cache["default:random"] = self.random(0)
                return self._cache["default:random"]
        voice = str(voice)
        if voice == "random":
            return self.random(seed)
        if voice in self.names():
            assert self.model_dir is not None
            path = self.model_dir / VOICES_DIR / f"{voice}.safetensors"
        else:
            path = Path(voice).expanduser()
            if not path.exists():
                names = ", ".join(self.names()) or "none"
                raise AudioError(
                    f"voice {voice!r} is neither a voice of this model (available: {names}) nor an existing file; "
                    "pass an audio clip, a saved voice, a voice name or 'random'"
                )
        key = str(path.resolve())
        if key not in self._cache:
            if path.is_file() and is_voice_file(path):
                self._cache[key] = self.check(Voice.load(path))
            else:
                self._cache[key] = self.encode(path)
        return self._cache[key]

    def check(self, voice: Voice) -> Voice:
        """Refuse a voice this model cannot use (no or bad latents, another latent size); warn when
        it was encoded with other weights."""
        if not isinstance(voice.latents, torch.Tensor):
            raise CheckpointError(f"voice {voice.name!r} has no latents tensor; make voices with encode_voice")
        check_latents(voice.latents, f"voice {voice.name or voice.source or '(unnamed)'!r}", self.frame_rate)
        if voice.latent_dim != self.latent_dim:
            raise CheckpointError(
                f"voice {voice.name!r} has {voice.latent_dim}-dimensional latents but this model uses "
                f"{self.latent_dim}; it was encoded with a different model: encode the clip again with this one"
            )
        if voice.model_id and voice.model_id != self.model_id:
            warnings.warn(
                f"voice {voice.name!r} was encoded with a different model ({voice.model_id} vs {self.model_id}); "
                "it may sound wrong: encode the clip again with this model",
                stacklevel=4,
            )
        return voice


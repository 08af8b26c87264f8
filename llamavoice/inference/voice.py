"""A reusable voice: the prompt latents of an encoded clip, saved with safetensors.

A voice is the flow-space latent sequence u (T, D) of a reference clip (3-15 s, any format,
rate or channel count; its transcript is not needed because the LM is trained with prompts from
*another* utterance of the speaker). It is encoded once and reused for every sentence.

Files are always safetensors, whatever their extension (``voice.pt`` included): loading one never
unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

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
        """Write the voice as safetensors (whatever the extension)."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(
                {"latents": self.latents.detach().float().cpu().contiguous()},
                str(path),
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


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights that map audio to prompt latents (VAE encoder and flow), so a
    voice can tell when it is used with a model that would read it differently."""
    h = hashlib.sha256()
    for part in (model.vae.encoder, model.flow):
        for name, tensor in sorted(part.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]

"""A disk cache of VAE posteriors, so stage ``lm`` need not re-encode every utterance each epoch.

One safetensors file per (audio file, model) pair holding ``mu`` and ``logstd`` (frames, latent).
The key hashes the audio's absolute path, size and modification time (a changed file is a miss,
not a stale hit) together with a ``model_key`` the caller provides. The posterior depends on the
encoder's *weights*, not just the config, so ``model_key`` should fingerprint both:
:func:`weights_fingerprint` does that.

Writes go to a temporary file and are renamed into place, so concurrent writers (DDP ranks,
DataLoader workers) never leave a half-written entry; a corrupt entry reads as a miss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llamavoice.data.manifest import DatasetError

log = logging.getLogger(__name__)


def weights_fingerprint(module: torch.nn.Module, config: Any = None) -> str:
    """A short hash of a module's weights (and an optional config dict/dataclass)."""
    h = hashlib.sha256()
    if config is not None:
        data = config.to_dict() if hasattr(config, "to_dict") else config
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class LatentCache:
    """``get(audio_path)`` -> ``(mu, logstd)`` or None; ``put(audio_path, mu, logstd)``."""

    def __init__(self, directory: str | Path, model_key: str):
        if not model_key:
            raise DatasetError("LatentCache needs a non-empty model_key (e.g. weights_fingerprint(model.vae, config))")
        self.directory = Path(directory)
        self.model_key = str(model_key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create latent cache folder {self.directory}: {exc.strerror or exc}") from exc

    def key(self, audio_path: str | Path) -> str:
        path = os.path.abspath(audio_path)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DatasetError(f"latent cache: cannot stat audio file {path}: {exc.strerror or exc}") from exc
        ident = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{self.model_key}"
        return hashlib.sha256(ident.encode()).hexdigest()

    def path(self, audio_path: str | Path) -> Path:
        k = self.key(audio_path)
        return self.directory / k[:2] / f"{k}.safetensors"

    def get(self, audio_path: str | Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        file = self.path(audio_path)
        if not file.is_file():
            return None
        try:
            data = load_file(str(file))
            return data["mu"].float(), data["logstd"].float()
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            log.warning("latent cache entry %s is unreadable (%s); treating it as a miss", file, exc)
            return None

    def put(self, audio_path: str | Path, mu: torch.Tensor, logstd: torch.Tensor) -> Path:
        if mu.shape != logstd.shape:
            raise DatasetError(f"latent cache: mu {tuple(mu.shape)} and logstd {tuple(logstd.shape)} differ in shape")
        file = self.path(audio_path)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tensors = {
            "mu": mu.detach().to("cpu", torch.float32).contiguous(),
            "logstd": logstd.detach().to("cpu", torch.float32).contiguous(),
        }
        try:
            save_file(tensors, str(tmp), metadata={"audio": os.path.abspath(audio_path), "model_key": self.model_key})
            os.replace(tmp, file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"cannot write latent cache entry {file}: {exc.strerror or exc}") from exc
        return file

    def __contains__(self, audio_path: str | Path) -> bool:
        return self.path(audio_path).is_file()

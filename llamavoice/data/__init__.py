"""Datasets: manifests, corpus readers, preparation, the training dataset and batching.

Imports are lazy: ``llamavoice prepare`` and the readers must not pay for importing the model
(``TTSDataset``/``collate`` need :class:`llamavoice.models.llamavoice.Batch`).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "llamavoice.data.manifest",
    "ManifestEntry": "llamavoice.data.manifest",
    "read_manifest": "llamavoice.data.manifest",
    "write_manifest": "llamavoice.data.manifest",
    "TTSDataset": "llamavoice.data.dataset",
    "collate": "llamavoice.data.dataset",
    "DurationBatchSampler": "llamavoice.data.sampler",
    "LatentCache": "llamavoice.data.cache",
    "weights_fingerprint": "llamavoice.data.cache",
    "read_dataset": "llamavoice.data.formats",
    "detect_format": "llamavoice.data.formats",
    "prepare": "llamavoice.data.prepare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llamavoice.data' has no attribute {name!r}")

"""Training checkpoints: accelerate's full state plus a small ``meta.json`` we can check.

Layout of a run directory::

    run/
      config.yaml            the resolved run config
      tokenizer/             the tokenizer every stage of this run uses
      checkpoints/step_00000500/   accelerator.save_state (weights, optimizers, schedulers, RNG,
                                   registered objects: train state, sampler position, EMA)
                                   + meta.json + the tokenizer files
      final/                 save_pretrained export
      metrics.jsonl  tb/  samples/

A checkpoint is written to ``step_N.tmp`` and renamed when complete, so a run killed while saving
never leaves a half-written checkpoint that ``--resume`` would pick.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from llamavoice.config import ModelConfig
from llamavoice.errors import CheckpointError
from llamavoice.models.llamavoice import CONFIG_FILE, WEIGHTS_FILE, LlamaVoice, read_model_config
from llamavoice.version import __version__

META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# accelerate names the first prepared model's weights model.safetensors; our stages always prepare
# the module that holds the LlamaVoice first.
ACCELERATE_WEIGHTS = "model.safetensors"


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / META_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, meta: dict[str, Any], tokenizer: Any,
                    keep_last: int) -> Path:
    """Save the full training state at ``step`` and prune to the newest ``keep_last`` checkpoints.

    Every process must call this (accelerate writes each rank's RNG state)."""
    root = checkpoints_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tokenizer.save(tmp)
        (tmp / META_FILE).write_text(json.dumps({**meta, "step": step, "llamavoice_version": __version__}, indent=2))
        if final.exists():  # a previous run reached this step, then was resumed from an earlier one
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no {META_FILE}); pass a checkpoints/step_N dir")
    try:
        return json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is corrupt ({exc}); resume from an older checkpoint") from exc


def architecture_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two architecture dicts, e.g. ``lm.depth: 6 -> 4``.

    Only keys present on both sides count: a field added to or dropped from ModelConfig by a newer
    llamavoice is a schema change (the checkpoint format version covers it), not a different model;
    if it did change tensor shapes, loading the state says so."""
    diffs = []
    for key in sorted(set(old) & set(new)):
        a, b = old[key], new[key]
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(architecture_diff(a, b, name + "."))
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            diffs.append(f"{name}: {a} -> {b}")
    return diffs


def check_resumable(path: Path, model_config: ModelConfig, stage: str) -> dict[str, Any]:
    """Refuse to resume into a different architecture or stage; returns the checkpoint's meta."""
    meta = read_meta(path)
    diffs = architecture_diff(meta.get("architecture", {}), model_config.architecture_dict())
    if diffs:
        shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
        raise CheckpointError(
            f"cannot resume from {path}: the config changes the model architecture ({shown}). "
            "Resume with the run's original model settings, or start a new run (use train.init_from "
            "to start from these weights where the shapes allow)."
        )
    if meta.get("stage") != stage:
        raise CheckpointError(
            f"cannot resume stage '{stage}' from {path}, a checkpoint of stage '{meta.get('stage')}'. "
            f"Start a new run with train.init_from={path} instead of --resume."
        )
    return meta


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training checkpoints hold the stage module's state: keys like ``module.model.vae...``."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not key.startswith("model."):
            continue  # e.g. the discriminators of a VAE-stage checkpoint
        out[key[len("model.") :]] = value
    return out


def load_init_weights(model: LlamaVoice, path: str | Path, parts: list[str] | None = None,
                      deepen_lm: bool = False) -> str:
    """Load weights for ``train.init_from``: a save_pretrained dir or a training checkpoint dir.

    Every tensor must match in shape; tensors the source lacks keep their fresh init (e.g. the flow
    and LM when starting stage ``lm`` from a VAE-only export). ``parts`` (e.g. ``["vae"]``) takes only
    those modules, and only their config sections (plus ``audio``) must agree: a new LM can start
    from another model's VAE. ``deepen_lm`` accepts a source LM with fewer layers
    (``train.init_deepen_lm``, :func:`_start_as_identity`). Returns a one-line summary."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
        source_cfg = read_model_config(path)
        weights = path / WEIGHTS_FILE
        prefixed = False
    elif (path / META_FILE).is_file() and (path / ACCELERATE_WEIGHTS).is_file():
        source_cfg = ModelConfig.from_dict(read_meta(path)["model"])
        weights = path / ACCELERATE_WEIGHTS
        prefixed = True
    else:
        raise CheckpointError(
            f"train.init_from={path} is neither a model directory (config.json + model.safetensors) "
            "nor a training checkpoint (checkpoints/step_N with meta.json)"
        )
    sections = None if parts is None else {"audio", *parts}
    own_arch, source_arch = model.config.architecture_dict(), source_cfg.architecture_dict()
    if sections is not None:
        own_arch = {k: v for k, v in own_arch.items() if k in sections}
        source_arch = {k: v for k, v in source_arch.items() if k in sections}
    diffs = architecture_diff(source_arch, own_arch)
    source_depth, own_depth = source_cfg.lm.depth, model.config.lm.depth
    if deepen_lm and own_depth >= source_depth:
        diffs = [d for d in diffs if not d.startswith("lm.depth:")]
    if diffs:
        raise CheckpointError(
            f"train.init_from={path} has a different architecture ({'; '.join(diffs[:6])}); "
            "use the same model settings as the run that produced it"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} is corrupt or truncated ({exc})") from exc
    if prefixed:
        state = _strip_prefixes(state)
    if parts is not None:
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise CheckpointError(f"{weights} holds tensors this model lacks (e.g. {unexpected[:3]})")
    model.load_state_dict(state, strict=False)
    missing = len(set(own) - set(state))
    grown = ""
    if deepen_lm and own_depth > source_depth and (parts is None or "lm" in parts):
        _start_as_identity(model, own_depth - source_depth)
        grown = (f"; the LM grew from {source_depth} to {own_depth} layers "
                 f"({own_depth - source_depth} new ones start as the identity)")
    return (f"loaded {len(state)} tensors from {path}" + (f" ({missing} keep their fresh init)" if missing else "")
            + grown)


@torch.no_grad()
def _start_as_identity(model: LlamaVoice, new_layers: int) -> None:
    """Zero what the last ``new_layers`` layers of the LM's top stack write to the residual stream
    (attention's output projection, the feed-forward's last linear): each new block then adds
    nothing, and the deeper LM computes what the loaded one did, while its gradients are not zero."""
    lm = model.lm
    stack = lm.decoder_upper if lm.decoder_upper is not None else lm.decoder
    blocks = [layer[1] for layer in stack.layers][-2 * new_layers :]  # an attention and a feed-forward each
    for block in blocks:
        writers = [m for m in block.modules() if isinstance(m, torch.nn.Linear) and m.out_features == lm.cfg.dim]
        writers[-1].weight.zero_()
        if writers[-1].bias is not None:
            writers[-1].bias.zero_()


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> tuple[LlamaVoice, str]:
    """Rebuild the LlamaVoice of a training checkpoint (with its tokenizer), using the EMA weights
    when the run kept an EMA and ``use_ema``. Returns the model (eval mode) and which weights."""
    from llamavoice.text.tokenizer import TextTokenizer

    path = Path(path)
    meta = read_meta(path)
    model = LlamaVoice(ModelConfig.from_dict(meta["model"]), TextTokenizer.load(path))
    load_init_weights(model, path)
    which = "checkpoint weights"
    ema_file = path / "custom_checkpoint_1.pkl"  # registration order: 0 = TrainState, 1 = EMA
    if use_ema and meta.get("ema"):
        if not ema_file.is_file():
            raise CheckpointError(f"{path} was saved with EMA but lacks {ema_file.name}")
        # weights_only: the EMA state is a dict of tensors and numbers, so nothing in a checkpoint
        # handed to export can run code. (Resuming a run is different: accelerate's load_state
        # unpickles optimizer and RNG state, so only resume run directories you trust.)
        try:
            state = torch.load(ema_file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            raise CheckpointError(f"{ema_file} is not a plain EMA state of tensors ({str(exc).splitlines()[0]}); "
                                  "export with use_ema=False or from another checkpoint") from exc
        if not isinstance(state, dict) or not isinstance(state.get("shadow"), dict):
            raise CheckpointError(f"{ema_file} holds no EMA weights ('shadow'); export with use_ema=False")
        # Names as the EMA saw them; a run that compiled with torch.compile's wrapper adds _orig_mod.
        shadow = {n.replace("_orig_mod.", ""): v for n, v in state["shadow"].items()}
        params = dict(model.named_parameters())
        bad = [n for n, v in shadow.items()
               if n not in params or not isinstance(v, torch.Tensor) or v.shape != params[n].shape]
        if bad:
            raise CheckpointError(f"{ema_file} does not match this model's weights (e.g. {bad[:3]}); "
                                  "export with use_ema=False")
        with torch.no_grad():
            for name, value in shadow.items():
                params[name].copy_(value.to(params[name].dtype))
        which = "checkpoint EMA weights"
    return model.eval(), which

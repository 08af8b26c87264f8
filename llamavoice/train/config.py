"""Training configuration: one YAML file with a ``model:`` and a ``train:`` section.

``model:`` is a preset name (``small``) or a mapping ``{preset: small, lm: {depth: 4}, ...}`` whose
fields override that preset. ``train:`` holds :class:`TrainConfig`. Command-line overrides such as
``--set train.max_steps=10`` or ``--set model.lm.depth=4`` are applied on top, values parsed as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llamavoice.config import ModelConfig, _from_dict, load_mapping, preset
from llamavoice.errors import ConfigError

STAGES = ("vae", "decoder", "decoder_lm", "lm", "joint")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class OptimConfig:
    """AdamW settings for one group of parameters. Weight decay applies to matrices only."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    eps: float = 1e-8


@dataclass
class TrainConfig:
    stage: str = "vae"  # vae | decoder (VAE decoder only) | decoder_lm (decoder on LM latents) | lm | joint
    # --- data -------------------------------------------------------------------------------
    train_manifest: str = ""
    val_manifest: str | None = None  # None: no validation
    tokenizer: str | None = None  # directory of a saved TextTokenizer; None: train one on train texts
    frame_budget_seconds: float = 40.0  # audio seconds per micro-batch (target + prompt not counted)
    max_utterance_seconds: float = 20.0  # longer utterances are left out
    vae_segment_seconds: float = 1.0  # random crop per item for the VAE/GAN losses
    max_prompt_seconds: float = 6.0  # voice prompt crop (another utterance of the same speaker)
    # Stage lm: encode every utterance once with the frozen VAE into this folder and train on the
    # cached posteriors (data/latents.py). None: encode the audio at every step.
    latent_cache: str | None = None
    num_workers: int = 0
    # --- optimization -----------------------------------------------------------------------
    max_steps: int = 1000  # optimizer steps
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 1.0  # 0 disables clipping (the norm is still computed for the NaN guard)
    vae_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, betas=(0.8, 0.9)))
    disc_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, betas=(0.8, 0.9)))
    lm_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1))
    disc_start_step: int = 0  # the GAN losses join after this many steps (mel + KL only before)
    decoder_lm_temperature: float = 0.2  # decoder_lm: sampling temperature of the LM's latents (as exported)
    lm_kl_weight_into_encoder: float = 0.1  # joint: scale of the LM loss gradient reaching the VAE encoder
    # The alignment block's beta-binomial prior: full strength until align_prior_hold steps, then
    # fading linearly to nothing at align_prior_end (models with lm.align_layer > 0 only).
    align_prior_hold: int = 1000
    align_prior_end: int = 3000
    mixed_precision: str = "no"  # no | bf16 | fp16
    ema_decay: float = 0.0  # 0 disables EMA; e.g. 0.999
    compile: bool = False  # torch.compile the VAE encoder/decoder backbone and the LM
    seed: int = 1234
    # --- bookkeeping ------------------------------------------------------------------------
    init_from: str | None = None  # a training checkpoint dir or a save_pretrained dir (weights only)
    init_parts: list[str] | None = None  # take only these modules from init_from, e.g. [vae]; None: all
    # init_from may hold a shallower LM: its layers fill the first ones and the extra layers of the last
    # stack start as the identity (output projections zeroed: LLaMA Pro's block expansion), so the
    # deeper LM starts out saying exactly what the source said.
    init_deepen_lm: bool = False
    checkpoint_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    val_every: int = 500
    val_batches: int = 4
    num_samples: int = 2  # audio samples (and mel plots) written at each validation
    # Whisper WER (the [eval] extra) at every validation on this many held-out sentences of
    # val_manifest, each spoken in its speaker's voice from another clip (stages lm and joint); 0 = off.
    eval_items: int = 0
    eval_sampling: dict[str, Any] | None = None  # SamplingConfig fields for it, e.g. {temperature: 0.4}
    export_ema: bool = True  # export EMA weights when EMA is on


def align_prior_weight(cfg: TrainConfig, step: int) -> float:
    """Strength of the alignment prior at optimizer step ``step`` (1 → 0, see TrainConfig)."""
    if step < cfg.align_prior_hold:
        return 1.0
    if step >= cfg.align_prior_end:
        return 0.0
    return 1.0 - (step - cfg.align_prior_hold) / max(1, cfg.align_prior_end - cfg.align_prior_hold)


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig
    model_preset: str = "small"

    def to_dict(self) -> dict[str, Any]:
        model = self.model.to_dict()
        return {"model": {"preset": self.model_preset, **model}, "train": dataclasses.asdict(self.train)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    data: dict[str, Any] | None = None) -> RunConfig:
    """Read a run config (YAML file or dict) and apply ``section.key=value`` overrides."""
    raw = copy.deepcopy(data) if data is not None else load_mapping(path)
    unknown = sorted(set(raw) - {"model", "train"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown} in the run config; use 'model:' and 'train:'")
    raw.setdefault("model", "small")
    raw.setdefault("train", {})
    if isinstance(raw["model"], str):
        raw["model"] = {"preset": raw["model"]}
    for item in overrides or []:
        _apply_override(raw, item)
    return build_run_config(raw)


def _base_model(name: str) -> ModelConfig:
    """``model.preset``: a preset name, or a saved model directory whose architecture to continue
    (e.g. fine-tuning the shipped default's decoder needs exactly its config)."""
    if Path(name).is_dir():
        from llamavoice.models.llamavoice import read_model_config

        return read_model_config(Path(name))
    return preset(name)


def build_run_config(raw: dict[str, Any]) -> RunConfig:
    model_raw = dict(raw.get("model") or {})
    name = str(model_raw.pop("preset", "small"))
    base = _base_model(name).to_dict()
    _deep_update(base, model_raw, "model")
    model = ModelConfig.from_dict(_coerce(ModelConfig, base, "model"))
    train_raw = dict(raw.get("train") or {})
    for key in ("vae_optim", "disc_optim", "lm_optim"):
        if key in train_raw:  # partial optimizer sections override the stage's defaults
            default = dataclasses.asdict(getattr(TrainConfig(), key))
            if not isinstance(train_raw[key], dict):
                raise ConfigError(f"train.{key} must be a mapping like {{lr: 1e-4}}")
            default.update(train_raw[key])
            train_raw[key] = default
    optims = {key: train_raw.pop(key) for key in ("vae_optim", "disc_optim", "lm_optim") if key in train_raw}
    train = _from_dict(TrainConfig, _coerce(TrainConfig, train_raw, "train"), "train")
    for key, value in optims.items():
        opt = _from_dict(OptimConfig, _coerce(OptimConfig, value, f"train.{key}"), f"train.{key}")
        if len(opt.betas) != 2:
            raise ConfigError(f"train.{key}.betas must be two numbers, e.g. [0.8, 0.9]")
        opt.betas = (float(opt.betas[0]), float(opt.betas[1]))
        setattr(train, key, opt)
    validate(train, model)
    return RunConfig(model=model, train=train, model_preset=name)


def validate(cfg: TrainConfig, model: ModelConfig) -> None:
    """Catch settings that would only fail (or silently misbehave) deep inside a run."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"train.stage must be one of {list(STAGES)}, got '{cfg.stage}'")
    if cfg.mixed_precision not in PRECISIONS:
        raise ConfigError(f"train.mixed_precision must be one of {list(PRECISIONS)}, got '{cfg.mixed_precision}'")
    if not cfg.train_manifest:
        raise ConfigError("train.train_manifest is not set: point it to a manifest .jsonl of training utterances")
    positive = {
        "max_steps": cfg.max_steps, "grad_accum": cfg.grad_accum, "checkpoint_every": cfg.checkpoint_every,
        "keep_last": cfg.keep_last, "log_every": cfg.log_every, "val_every": cfg.val_every,
        "frame_budget_seconds": cfg.frame_budget_seconds, "vae_segment_seconds": cfg.vae_segment_seconds,
        "max_prompt_seconds": cfg.max_prompt_seconds,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"train.{name} must be > 0, got {value}")
    if cfg.warmup_steps < 0 or not 0.0 <= cfg.min_lr_ratio <= 1.0:
        raise ConfigError("train.warmup_steps must be >= 0 and train.min_lr_ratio within [0, 1]")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1) (0 disables EMA), got {cfg.ema_decay}")
    if not 0 <= cfg.align_prior_hold <= cfg.align_prior_end:
        raise ConfigError("train.align_prior_hold must be >= 0 and <= train.align_prior_end")
    if cfg.init_parts is not None and not set(cfg.init_parts) <= {"vae", "flow", "lm"}:
        raise ConfigError(f"train.init_parts must list some of vae, flow, lm; got {cfg.init_parts}")
    if cfg.eval_items < 0:
        raise ConfigError(f"train.eval_items must be >= 0 (0 turns the WER check off), got {cfg.eval_items}")
    if cfg.eval_items and (cfg.stage not in ("lm", "joint") or not cfg.val_manifest):
        raise ConfigError("train.eval_items speaks held-out sentences with the LM: it needs stage lm or joint and "
                          "train.val_manifest")
    if cfg.eval_sampling is not None:
        from llamavoice.inference.sampling import SamplingConfig

        SamplingConfig.check_overrides(cfg.eval_sampling, "train.eval_sampling", seed_from="the check uses train.seed")
    if cfg.latent_cache and cfg.stage != "lm":
        raise ConfigError("train.latent_cache is for stage 'lm' only (the VAE must be frozen); unset it")
    if cfg.lm_kl_weight_into_encoder < 0:
        raise ConfigError("train.lm_kl_weight_into_encoder must be >= 0")
    seg = cfg.vae_segment_seconds * model.audio.sample_rate
    if seg < model.audio.samples_per_latent:
        raise ConfigError(
            f"train.vae_segment_seconds={cfg.vae_segment_seconds} is shorter than one latent frame "
            f"({model.audio.samples_per_latent / model.audio.sample_rate:.3f} s)"
        )
    if cfg.frame_budget_seconds < cfg.max_utterance_seconds:
        raise ConfigError(
            f"train.frame_budget_seconds ({cfg.frame_budget_seconds}) must be at least "
            f"train.max_utterance_seconds ({cfg.max_utterance_seconds}) so every utterance fits in a batch"
        )


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value, e.g. train.max_steps=10")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in ("model", "train") or len(parts) < 2:
        raise ConfigError(f"override '{item}': the key must start with 'model.' or 'train.'")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': cannot parse the value ({exc})") from exc
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
        node = child
    node[parts[-1]] = parsed


def _deep_update(base: dict[str, Any], new: dict[str, Any], where: str) -> None:
    for key, value in new.items():
        if key not in base:
            raise ConfigError(f"unknown key '{key}' in config section '{where}'; known keys: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config section '{where}.{key}' must be a mapping")
            _deep_update(base[key], value, f"{where}.{key}")
        else:
            base[key] = value


def _coerce(cls: type, raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Turn YAML strings into the numbers the dataclass expects: YAML 1.1 reads ``1e-4`` (no dot)
    as a string, and a learning rate that silently became a string fails far from the config."""
    if not isinstance(raw, dict):
        return raw
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = dict(raw)
    for name, value in raw.items():
        if name not in fields:
            continue  # reported by _from_dict with the list of known keys
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            out[name] = _coerce(hint, value, f"{where}.{name}")
            continue
        options = set(typing.get_args(hint)) or {hint}
        if isinstance(value, str) and str not in options:
            for kind in (int, float):
                if kind in options:
                    try:
                        out[name] = kind(value)
                        break
                    except ValueError:
                        pass
            else:
                raise ConfigError(f"{where}.{name} must be a number, got '{value}'")
        elif isinstance(value, int) and not isinstance(value, bool) and float in options and int not in options:
            out[name] = float(value)
    return out

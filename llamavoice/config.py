"""One typed configuration that builds every part of LlamaVoice.

The same config drives training and rebuilds the model at load time (it is saved next to the
weights). Presets: ``tiny`` (tests), ``small`` (CPU-friendly default model), ``base`` (GPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from llamavoice.errors import ConfigError


@dataclass
class AudioConfig:
    sample_rate: int = 24000
    n_fft: int = 1024
    hop_length: int = 240  # 100 Hz mel frames at 24 kHz
    n_mels: int = 100
    f_min: float = 0.0
    f_max: float | None = None
    latent_downsample: int = 4  # mel frames per latent frame: 25 Hz latent at 24 kHz

    @property
    def samples_per_latent(self) -> int:
        return self.hop_length * self.latent_downsample

    @property
    def latent_rate(self) -> float:
        return self.sample_rate / self.samples_per_latent


@dataclass
class VAEConfig:
    latent_dim: int = 32
    encoder_dim: int = 256
    encoder_layers: int = 4
    decoder_dim: int = 384
    decoder_intermediate_dim: int = 1152
    decoder_layers: int = 8
    min_logstd: float = -7.0


@dataclass
class FlowConfig:
    num_layers: int = 4
    hidden_dim: int = 128
    num_blocks: int = 2  # residual blocks in each coupling network
    coupling: str = "affine"  # "affine" or "rq" (rational-quadratic spline)
    num_bins: int = 8  # only for "rq"
    tail_bound: float = 5.0  # only for "rq"


@dataclass
class LMConfig:
    dim: int = 512
    depth: int = 6
    heads: int = 8
    kv_heads: int = 2
    ff_mult: float = 8 / 3  # Llama's SwiGLU width
    reduction_factor: int = 1  # latent frames predicted per decoder step
    max_text_tokens: int = 512
    min_logstd: float = -5.0
    max_logstd: float = 2.0
    input_noise: float = 0.0  # std of Gaussian noise on input latents (against exposure bias)
    # Input bottleneck on the fed-back latents (against copying the previous frame instead of
    # reading the text): a 2-layer ReLU prenet of this width with dropout, in training only.
    # 0: one Linear, no bottleneck.
    prenet_dim: int = 0
    prenet_dropout: float = 0.5
    # Alignment attention: after this many decoder layers, each target position attends to the
    # text positions only (with an annealed beta-binomial prior and a guided-attention loss in
    # training), and adds what it read to the residual stream. 0: no alignment block.
    align_layer: int = 0
    align_heads: int = 1
    # A learned bias per head on the offset (text position - output step), clamped to ± this range:
    # a cue for the diagonal that needs no target length (about one phoneme per step of r = 2 at
    # 25 Hz). 0: none.
    align_offset_range: int = 0
    dropout: float = 0.0
    # Conditioning dropout in training, so classifier-free guidance works at inference:
    # a dropped item sees no text (resp. no prompt).
    text_dropout: float = 0.1
    prompt_dropout: float = 0.1


@dataclass
class TextConfig:
    vocab_size: int = 1024  # upper bound for the tokenizer trained on the corpus
    frontend: str = "bpe"  # "bpe" (byte-level BPE of the text) or "phonemes" (IPA via gruut)


@dataclass
class LossConfig:
    kl_weight: float = 1.0  # LM KL (nats per latent frame)
    stop_weight: float = 1.0
    stop_pos_weight: float = 20.0
    align_weight: float = 0.0  # guided-attention loss on the alignment block (DCTTS)
    align_sigma: float = 0.2  # width of its diagonal band, as a fraction of the text/target length
    vae_kl_weight: float = 1e-3  # posterior to N(0, I): keeps z smooth for the decoder
    mel_weight: float = 45.0
    mrd_weight: float = 0.1
    mpd_weight: float = 1.0
    feature_matching_weight: float = 1.0  # scaled by mrd/mpd weights as vocos does


@dataclass
class ModelConfig:
    audio: AudioConfig = field(default_factory=AudioConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    text: TextConfig = field(default_factory=TextConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    # --- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model")

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False)
            if path.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=2)
        )
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(load_mapping(path))

    def architecture_dict(self) -> dict[str, Any]:
        """The fields that decide the shapes of the weights (loss weights excluded)."""
        d = self.to_dict()
        d.pop("loss")
        return d


T = TypeVar("T")

# Fields that were removed, with the value that meant "off". Configs saved before (model
# directories, run configs, checkpoint meta) keep loading when they hold that value; any other
# value is refused by name, since this llamavoice cannot build that model.
_RETIRED: dict[str, dict[str, Any]] = {
    "FlowConfig": {"context_dim": 0},  # a flow conditioned on a context vector: never wired to any input
}


def _from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a mapping, checking every value against the field's type, so a
    config.json with ``"latent_dim": "thirty-two"`` fails here in one line, not deep inside torch."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    retired = _RETIRED.get(cls.__name__, {})
    for name in sorted(set(data) & set(retired)):
        if data[name] != retired[name] or isinstance(data[name], bool):
            raise ConfigError(f"config field '{where}.{name}' was removed from llamavoice (only "
                              f"{retired[name]!r} is still accepted, and ignored); delete it from the config")
    data = {k: v for k, v in data.items() if k not in retired}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in config section '{where}'; known keys: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(fields[name])
        if sub is not None:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = _typed(value, hints.get(name, Any), f"{where}.{name}")
    return cls(**kwargs)


def _dataclass_type(f: dataclasses.Field) -> type | None:
    sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    return sub if sub is not None and dataclasses.is_dataclass(sub) else None


def _typed(value: Any, hint: Any, where: str) -> Any:
    """``value`` if it fits ``hint`` (an int is a valid float; a list a valid tuple), else ConfigError."""
    ok, out = _fits(value, hint)
    if not ok:
        raise ConfigError(f"config field '{where}' must be {_describe(hint)}, got {value!r}")
    return out


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, out = _fits(value, arg)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in args and not (isinstance(value, bool) and True not in args and False not in args), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True, float(value)
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, value
            items = [_fits(v, a) for v, a in zip(value, args, strict=True)]
        else:
            item = args[0] if args else Any
            items = [_fits(v, item) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, origin(out for _, out in items)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # a type this checker does not know: the dataclass itself decides


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
             type(None): "null"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin in (tuple, list):
        plural = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    return getattr(hint, "__name__", str(hint))


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file into a dict, with a clear error if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must contain a mapping at the top level")
    return data


def _tiny() -> ModelConfig:
    return ModelConfig(
        vae=VAEConfig(
            latent_dim=8, encoder_dim=32, encoder_layers=1, decoder_dim=32,
            decoder_intermediate_dim=64, decoder_layers=1,
        ),
        flow=FlowConfig(num_layers=2, hidden_dim=16, num_blocks=1),
        lm=LMConfig(dim=64, depth=2, heads=2, kv_heads=1, max_text_tokens=128),
        text=TextConfig(vocab_size=300),
    )


def _small() -> ModelConfig:
    return ModelConfig()


def _base() -> ModelConfig:
    return ModelConfig(
        vae=VAEConfig(
            latent_dim=32, encoder_dim=384, encoder_layers=6, decoder_dim=512,
            decoder_intermediate_dim=1536, decoder_layers=8,
        ),
        flow=FlowConfig(num_layers=6, hidden_dim=256, num_blocks=2),
        lm=LMConfig(dim=1024, depth=12, heads=16, kv_heads=4, max_text_tokens=1024),
        text=TextConfig(vocab_size=4096),
    )


PRESETS = {"tiny": _tiny, "small": _small, "base": _base}


def preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset (``tiny``, ``small``, ``base``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()

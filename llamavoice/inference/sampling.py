"""Sampling controls and the tensor-only sampling step on the LM's predicted Gaussian.

The LM predicts, for the next group of r latent frames, a diagonal Gaussian N(μ, σ²) in flow
space plus a stop logit. One sampling step turns that into frames and a stop decision:

- classifier-free guidance on μ: ``μ = μ_c + w (μ_c − μ_u)`` (``w = 0`` disables it; the
  unconditional branch is the same item with no text, which the LM saw in training through
  ``LMConfig.text_dropout``),
- temperature τ on σ: ``u = μ + τ σ ε`` (τ = 0 takes μ),
- dynamic temperature: where the model is uncertain (large σ) τ is lowered toward
  ``min_temperature``, so the wide, unsure predictions are not sampled wildly,
- a stall guard: runs of near-identical frames are resampled once with fresh noise, then stopped.

Everything in :func:`sample_step` is tensor arithmetic (no ``.item()``, no Python branching on
data) so it never forces a host sync and can be compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from llamavoice.errors import ConfigError

STALL_ACTIONS = ("resample", "stop", "off")

# Caps that keep one call's work bounded (README "Errors and limits"). Per call, the total text
# is capped by ``max_total_chars`` (an option, so a long book can raise it); every chunk's audio by
# MAX_CHUNK_SECONDS, whatever the per-character settings say.
DEFAULT_MAX_TOTAL_CHARS = 20_000
MAX_CHUNK_SECONDS = 300.0
MAX_NUM_SAMPLES = 16
# (low, high) inclusive; a float field takes any finite number in range, an integer field an int.
LIMITS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 5.0),  # beyond ~2 the samples are noise; inf gave NaN audio
    "min_temperature": (0.0, 5.0),
    "cfg_weight": (0.0, 10.0),  # guidance pushes μ off the model's range quickly: 1-3 is typical
    "stop_threshold": (0.0, 1e6),  # > 1 never stops before the max length
    "min_seconds_per_char": (0.0, 1.0),
    "max_seconds_per_char": (1e-3, 1.0),  # 1 s per character is 15x slower than speech
    "max_extra_seconds": (0.0, 60.0),
    "max_seconds": (0.04, MAX_CHUNK_SECONDS),
    "speed": (0.25, 4.0),
    "end_hold_seconds": (0.0, 60.0),
    "stall_frames": (1, 10_000),
    "stall_tolerance": (0.0, 1e6),
    "stall_temperature": (0.0, 5.0),
    "num_samples": (1, MAX_NUM_SAMPLES),
    "seed": (0, 2**63 - 1),
    "max_chars": (1, 2_000),
    "crossfade_seconds": (0.0, 0.5),
    "max_total_chars": (1, 10**9),
}
_INTEGERS = {"stall_frames", "num_samples", "seed", "max_chars", "max_total_chars"}
_OPTIONAL = {"min_temperature", "max_seconds", "seed", "end_hold_seconds"}


def _checked(name: str, value: Any, low: float, high: float, integer: bool = False) -> int | float:
    """``value`` as a plain int/float if it is a number in [low, high]; else a one-line ConfigError."""
    if isinstance(value, (bool, np.bool_)):
        ok = False
    elif integer:
        ok = isinstance(value, (int, np.integer))
        value = int(value) if ok else value
    else:
        ok = isinstance(value, (int, float, np.integer, np.floating))
        value = float(value) if ok else value
    span = f"{int(low):,} and {int(high):,}" if integer else f"{low:g} and {high:g}"
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"sampling option {name}={value!r} must be {kind} between {span}")
    if not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a finite number"
        hint = " (best-of-N is capped: call again with other seeds for more candidates)" \
            if name == "num_samples" else ""
        raise ConfigError(f"sampling option {name}={value!r} is out of range: use {kind} between {span}{hint}")
    return value


def check_options(values: dict[str, Any]) -> dict[str, Any]:
    """Each option on its own (name, type, range), as plain Python values. Front ends call this
    before loading a model; the checks that relate two options run when the config is built."""
    known = {f.name for f in dataclasses.fields(SamplingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown sampling option(s) {unknown}; known options: {sorted(known)}")
    out = {}
    for name, value in values.items():
        if name in LIMITS and not (value is None and name in _OPTIONAL):
            low, high = LIMITS[name]
            value = _checked(name, value, low, high, integer=name in _INTEGERS)
        elif name == "stall_action" and value not in STALL_ACTIONS:
            raise ConfigError(f"stall_action must be one of {STALL_ACTIONS}, got {value!r}")
        out[name] = value
    return out


@dataclass
class SamplingConfig:
    """Every knob of one synthesis call. Lengths are in seconds of speech at speed 1."""

    temperature: float = 0.7  # scale on σ; 0 = take μ
    min_temperature: float | None = None  # dynamic temperature: floor reached where σ is largest
    cfg_weight: float = 0.0  # classifier-free guidance weight on μ (0 = off)
    stop_threshold: float = 0.5  # stop when p(stop) > threshold (> 1 never stops before max length)
    min_seconds_per_char: float = 0.02  # min length = chars × this (no stop before it)
    max_seconds_per_char: float = 0.2  # max length = chars × this + max_extra_seconds
    max_extra_seconds: float = 2.0
    max_seconds: float | None = None  # absolute cap per sentence chunk
    # Models that read through the monotonic text window: stop at most this long after the reading
    # reached the last text token (None: only the stop head and the length limits decide).
    end_hold_seconds: float | None = 0.5
    speed: float = 1.0  # > 1 faster, < 1 slower (latents are resampled in time; pitch is kept)
    stall_frames: int = 25  # near-identical frames in a row that count as a stall (1 s: pauses are shorter)
    stall_tolerance: float = 0.02  # "near-identical": RMS change below this × RMS of the frame
    stall_action: str = "resample"  # "resample" (then stop if it persists), "stop" or "off"
    stall_temperature: float = 1.0  # temperature of a stall resample
    num_samples: int = 1  # best-of-N candidates per sentence
    seed: int | None = None  # None: drawn from torch's global RNG (so torch.manual_seed works)
    max_chars: int = 200  # long text is split into chunks of at most this many characters
    crossfade_seconds: float = 0.02  # equal-power cross-fade between consecutive chunks
    max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS  # longest text one call accepts (raise it for books)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check (and make plain Python numbers of) every field: the one place where sampling
        options are validated, for the CLI, the API and ``sampling.json`` alike. numpy scalars are
        accepted; NaN, infinity, booleans and values outside :data:`LIMITS` are refused."""
        for name, value in check_options({name: getattr(self, name) for name in LIMITS}).items():
            setattr(self, name, value)
        if self.min_temperature is not None and self.min_temperature > self.temperature:
            raise ConfigError(
                f"min_temperature={self.min_temperature} is above temperature={self.temperature}; "
                "dynamic temperature only lowers τ, so pick min_temperature <= temperature"
            )
        if self.min_seconds_per_char > self.max_seconds_per_char:
            raise ConfigError("min_seconds_per_char must not exceed max_seconds_per_char")
        if self.stall_action not in STALL_ACTIONS:
            raise ConfigError(f"stall_action must be one of {STALL_ACTIONS}, got {self.stall_action!r}")

    def replace(self, **changes: Any) -> SamplingConfig:
        """A copy with some fields changed; unknown names raise ConfigError."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {unknown}; known options: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def check_overrides(cls, overrides: Any, where: str, seed_from: str) -> dict[str, Any]:
        """``overrides`` (a mapping of fields to apply over a model's defaults, from ``where``)
        checked for names and ranges; no seed in it, since the caller draws seeds (``seed_from``)."""
        example = '{"temperature": 0.4, "cfg_weight": 2.0}'
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where} must be a mapping (a JSON object) of sampling settings, e.g. {example}")
        if "seed" in overrides:
            raise ConfigError(f"{where} sets no seed: {seed_from}")
        try:
            cls().replace(**overrides)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        return dict(overrides)

    def frame_limits(self, num_chars: int, frame_rate: float) -> tuple[int, int]:
        """(min, max) latent frames for a chunk of ``num_chars`` normalized characters."""
        max_s = num_chars * self.max_seconds_per_char + self.max_extra_seconds
        if self.max_seconds is not None:
            max_s = min(max_s, self.max_seconds)
        max_s = min(max_s, MAX_CHUNK_SECONDS)
        max_frames = max(1, math.ceil(max_s * frame_rate))
        min_frames = min(max_frames, math.floor(num_chars * self.min_seconds_per_char * frame_rate))
        return min_frames, max_frames


def derive_seed(seed: int, *path: int) -> int:
    """An independent 63-bit seed for (seed, chunk, candidate, ...), stable across runs."""
    digest = hashlib.blake2b(":".join(str(x) for x in (seed, *path)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_or_fresh(seed: int | None) -> int:
    """``seed``, or (None) a fresh one from torch's global RNG, so ``torch.manual_seed`` makes
    unseeded calls repeatable."""
    return int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())


@dataclass
class StepParams:
    """The sampling constants a step needs, resolved against the model (plain floats)."""

    temperature: float
    min_temperature: float
    cfg_weight: float
    stop_threshold: float
    stall_frames: int
    stall_tolerance: float
    stall_resample: bool
    stall_stop: bool
    stall_temperature: float
    logstd_low: float  # log σ at which the model counts as fully confident
    logstd_high: float  # log σ at which it counts as fully uncertain
    # Structure flags, decided here so the step only branches on booleans, never on float values
    # (a compiled step then treats the floats as inputs instead of recompiling for each value).
    guided: bool = False
    dynamic: bool = False

    @classmethod
    def from_config(cls, cfg: SamplingConfig, min_logstd: float) -> StepParams:
        return cls(
            temperature=cfg.temperature,
            min_temperature=cfg.temperature if cfg.min_temperature is None else cfg.min_temperature,
            cfg_weight=cfg.cfg_weight,
            stop_threshold=cfg.stop_threshold,
            stall_frames=cfg.stall_frames,
            stall_tolerance=cfg.stall_tolerance,
            stall_resample=cfg.stall_action == "resample",
            stall_stop=cfg.stall_action != "off",
            stall_temperature=cfg.stall_temperature,
            # A unit-variance prediction (log σ = 0) is "knows nothing" in the flow's normalized
            # space; the LM's lower clamp is the most confident it can be.
            logstd_low=min_logstd,
            logstd_high=0.0,
            guided=cfg.cfg_weight != 0.0,
            dynamic=cfg.min_temperature is not None and cfg.min_temperature < cfg.temperature,
        )


def guide(mu: Tensor, weight: float) -> Tensor:
    """Classifier-free guidance. ``mu`` stacks the conditional rows on the unconditional rows."""
    cond, uncond = mu.chunk(2, dim=0)
    return cond + weight * (cond - uncond)


def dynamic_temperature(logstd: Tensor, p: StepParams) -> Tensor:
    """Per item temperature (B, 1, 1): τ where the model is sure, sliding linearly down to
    ``min_temperature`` as the mean log σ of the group rises to ``logstd_high``."""
    if not p.dynamic:
        return torch.ones_like(logstd[:, :1, :1]) * p.temperature
    uncertainty = ((logstd.mean(dim=(1, 2), keepdim=True) - p.logstd_low) / (p.logstd_high - p.logstd_low))
    uncertainty = uncertainty.clamp(0.0, 1.0)
    return p.temperature - (p.temperature - p.min_temperature) * uncertainty


def frame_change(frames: Tensor, previous: Tensor) -> Tensor:
    """Relative RMS change of each frame from the one before it: (B, r, D), (B, D) → (B, r)."""
    before = torch.cat([previous[:, None], frames[:, :-1]], dim=1)
    diff = (frames - before).pow(2).mean(-1).sqrt()
    scale = before.pow(2).mean(-1).sqrt().clamp_min(1e-6)
    return diff / scale


@dataclass
class StepState:
    """Per-item loop state, all tensors on the model's device."""

    alive: Tensor  # (B,) bool: still generating
    lengths: Tensor  # (B,) groups kept so far
    previous: Tensor  # (B, D) last sampled frame
    stall: Tensor  # (B,) frames in the current run of near-identical frames
    loglik: Tensor  # (B,) summed log-likelihood of the kept frames under the model (for best-of-N)
    stalled: Tensor  # (B,) bool: stopped by the stall guard
    natural_stop: Tensor  # (B,) bool: stopped by the stop head


def initial_state(batch: int, latent_dim: int, device: torch.device) -> StepState:
    return StepState(
        alive=torch.ones(batch, dtype=torch.bool, device=device),
        lengths=torch.zeros(batch, dtype=torch.long, device=device),
        previous=torch.zeros(batch, latent_dim, device=device),
        stall=torch.zeros(batch, dtype=torch.long, device=device),
        loglik=torch.zeros(batch, device=device),
        stalled=torch.zeros(batch, dtype=torch.bool, device=device),
        natural_stop=torch.zeros(batch, dtype=torch.bool, device=device),
    )


def sample_step(
    mu: Tensor,
    logstd: Tensor,
    stop_logit: Tensor,
    noise: Tensor,
    alt_noise: Tensor,
    step: Tensor,
    min_groups: Tensor,
    max_groups: Tensor,
    state: StepState,
    p: StepParams,
) -> tuple[Tensor, StepState]:
    """One decoding step for every item.

    ``mu``/``logstd``: (B', r, D) fp32 with B' = 2B under guidance (conditional rows first);
    ``stop_logit``: (B',); ``noise``/``alt_noise``: (B, r, D) standard normal, pre-drawn per item;
    ``step``: 0-d long tensor, the number of groups already generated. The stop decision is taken
    on the state *before* this group (the stop head at position n says "stop with n groups").
    Returns the sampled group (B, r, D) and the updated state.
    """
    if p.guided:
        mu = guide(mu, p.cfg_weight)
        logstd = logstd.chunk(2, dim=0)[0]
        stop_logit = stop_logit.chunk(2, dim=0)[0]
    sigma = logstd.exp()
    tau = dynamic_temperature(logstd, p)
    group = mu + tau * sigma * noise

    change = frame_change(group, state.previous)  # (B, r)
    near = change < p.stall_tolerance
    # Count the run of near-identical frames ending at this group's last frame.
    run = torch.where(near.all(dim=1), state.stall + near.shape[1], torch.zeros_like(state.stall))
    stall_limit = p.stall_frames * (2 if p.stall_resample else 1)
    if p.stall_resample:
        # First stall: draw the group again from fresh noise at the stall temperature.
        redo = (run >= p.stall_frames) & (run < stall_limit)
        fresh = mu + p.stall_temperature * sigma * alt_noise
        group = torch.where(redo[:, None, None], fresh, group)
    stall_stop = (run >= stall_limit) if p.stall_stop else torch.zeros_like(state.alive)

    wants_stop = (torch.sigmoid(stop_logit) > p.stop_threshold) & (step >= min_groups)
    stop_now = state.alive & (wants_stop | (step >= max_groups) | stall_stop)
    keep = state.alive & ~stop_now
    loglik = -0.5 * ((group - mu) / sigma).pow(2) - logstd - 0.5 * math.log(2 * math.pi)
    new = StepState(
        alive=keep,
        lengths=torch.where(keep, step + 1, state.lengths),
        previous=torch.where(keep[:, None], group[:, -1], state.previous),
        stall=torch.where(keep, run, state.stall),
        loglik=state.loglik + torch.where(keep, loglik.mean(dim=(1, 2)), torch.zeros_like(state.loglik)),
        stalled=state.stalled | (stop_now & stall_stop),
        natural_stop=state.natural_stop | (stop_now & wants_stop),
    )
    return group, new

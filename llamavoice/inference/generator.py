"""The generation loop: prefill once, then per group of r frames one LM step and one sampling step.

The LM owns its decoding (``LatentLM.prefill`` / ``prefill_text`` / ``step`` over a
``models/kv_cache.py`` cache); this module only feeds it. Prefill: when the items carry a voice
``prefix_store`` (the API always passes the Voice's), the voice's ``[prompt][SEP]`` cache is
computed once per voice and each row only prefills its ``[text][BOS]``; the rows are then
left-padded into one cache. Without it the whole left-padded batch goes through ``LatentLM.prefill``.

Batching: every row's BOS ends up at the same slot; each item stops on its own (its stop head, its
min/max length, its stall guard) and finished items ride along until the whole batch is done.
Classifier-free guidance doubles the batch (conditional rows, then the same items without text)
and runs both through one cache, one forward per step.

Reproducibility: every item draws all of its noise up front from its own ``torch.Generator``
seeded with the item's seed, on the CPU. So an item's output does not depend on what else is in
the batch, on the device's RNG, or on how many steps other items take: batched synthesis equals
one-by-one synthesis and a seed gives the same latents on every run.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from llamavoice.errors import ConfigError, InferenceMemoryError  # noqa: F401  (re-exported)
from llamavoice.inference.runtime import has_int8_layers
from llamavoice.inference.sampling import SamplingConfig, StepParams, StepState, initial_state, sample_step
from llamavoice.models.kv_cache import KVCache, gather
from llamavoice.models.llamavoice import LlamaVoice
from llamavoice.models.lm import LatentLM

ATTENTION_BACKENDS = ("sdpa", "math")
# Models with an alignment block read the text monotonically at inference: each step may look from
# one position behind the last one read to this many ahead (about one phoneme is spoken per step of
# r = 2 at 25 Hz). 0 turns it off (a teacher-forced full forward has no window).
ALIGN_WINDOW = 3


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def memory_guard(device: torch.device, batch: int) -> Iterator[None]:
    """Turn an allocation failure into one actionable line."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        hint = "use a smaller batch (--batch-size) or fewer candidates (--num-samples)"
        if device.type != "cpu":
            hint += ", or run on the CPU (--device cpu)"
        raise InferenceMemoryError(
            f"out of memory on {device} while synthesizing a batch of {batch}; {hint}, or split the text"
        ) from exc


@dataclass
class GenerationItem:
    """One sequence to generate."""

    text: list[int]  # token ids (may be empty only for the unconditional branch, made internally)
    prompt: Tensor  # (T, D) flow-space latents u of the voice prompt; T may be 0
    seed: int
    min_frames: int = 0
    max_frames: int = 250
    # Where the KV cache of this voice's [prompt][SEP] prefix may be kept between calls (a Voice's
    # ``prefixes`` dict); None: prefill the whole sequence every time.
    prefix_store: dict | None = None


@dataclass
class Generated:
    u: Tensor  # (T, D) fp32 flow-space latents, on the CPU
    z: Tensor  # (T, D) fp32 VAE latents, on the CPU
    natural_stop: bool  # the stop head ended it (not max length, not the stall guard)
    stalled: bool
    loglik: float  # mean per-frame log-likelihood under the model (best-of-N default score)


def draw_noise(seed: int, groups: int, r: int, dim: int) -> tuple[Tensor, Tensor]:
    """All the standard-normal noise an item can use, from its own CPU generator."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(groups, r, dim, generator=gen)
    alt = torch.randn(groups, r, dim, generator=gen)
    return noise, alt


class StepDecoder(Protocol):
    """Another implementation of ``LatentLM.step`` on the same cache (the ONNX Runtime one,
    inference/onnx.py)."""

    def step(self, group: Tensor, cache: KVCache) -> Tensor: ...


class LatentGenerator:
    """Runs the LM over a batch of items.

    ``attention``: the LM's attention kernel, ``sdpa`` (torch picks flash / memory-efficient / math)
    or ``math`` (written out). ``compile=True`` compiles the step and the sampler with
    ``torch.compile``. ``step_decoder``: another implementation of the LM step, used only if it
    computes what ``LatentLM.step`` computes (checked here, on random inputs).
    """

    def __init__(
        self, model: LlamaVoice, *, compile: bool = False, attention: str = "sdpa",
        align_window: int = ALIGN_WINDOW, step_decoder: StepDecoder | None = None,
    ):
        if attention not in ATTENTION_BACKENDS:
            raise ConfigError(f"unknown attention backend {attention!r}; choose one of {ATTENTION_BACKENDS}")
        self.model = model
        self.lm = model.lm
        self.lm.attention = attention
        if self.lm.alignment is not None:  # the monotonic text window of models with an alignment block
            self.lm.alignment.window = int(align_window)
        self.r = model.lm.r
        self.dim = model.config.vae.latent_dim
        self._token = object()  # keys this generator's prefixes in a voice's prefix_store
        self.step_decoder = self._verified(step_decoder) if step_decoder is not None else None
        self._step: Callable = self.step_decoder.step if self.step_decoder is not None else self.lm.step
        self._sample: Callable = sample_step
        if compile:
            if self.step_decoder is None:
                self._step = torch.compile(self.lm.step, dynamic=True)
            # dynamic=None: a changed sampling value (temperature, ...) recompiles once, then stays symbolic.
            self._sample = torch.compile(sample_step, dynamic=None)
        self.compiled = compile

    def _verified(self, decoder: StepDecoder) -> StepDecoder | None:
        diff = compare_steps(self.lm, decoder)
        if diff > 5e-2:
            warnings.warn(f"the {type(decoder).__name__} step disagrees with LatentLM.step (relative difference "
                          f"{diff:.2e}); decoding with torch", stacklevel=3)
            return None
        return decoder

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def lm_dtype(self) -> torch.dtype:
        """The dtype of the LM's activations (fp32 around int8 weights)."""
        return self.lm.latent_in.weight.dtype

    @property
    def quantized(self) -> bool:
        """Whether the LM's transformer runs int8 quantized linear layers."""
        return has_int8_layers(self.lm)

    # --- inputs ------------------------------------------------------------------------------
    def _inputs(self, items: list[GenerationItem], guided: bool) -> tuple[Tensor, ...]:
        device, dtype = self.device, self.lm_dtype
        B = len(items)
        L = max(1, max(len(it.text) for it in items))
        P = max(it.prompt.shape[0] for it in items)
        text = torch.zeros(B, L, dtype=torch.long)
        # Prompts are usually already on the device (Voice.on caches them there): assemble them there.
        prompt = torch.zeros(B, P, self.dim, device=device, dtype=dtype)
        for i, it in enumerate(items):
            text[i, : len(it.text)] = torch.as_tensor(it.text, dtype=torch.long)
            prompt[i, : it.prompt.shape[0]] = it.prompt.to(device=device, dtype=dtype)
        text_lengths = torch.tensor([len(it.text) for it in items])
        prompt_lengths = torch.tensor([it.prompt.shape[0] for it in items])
        if guided:
            # Unconditional rows: the same voice prompt, no text.
            text, prompt = torch.cat([text, text]), torch.cat([prompt, prompt])
            text_lengths = torch.cat([text_lengths, torch.zeros_like(text_lengths)])
            prompt_lengths = torch.cat([prompt_lengths, prompt_lengths])
        return text.to(device), text_lengths.to(device), prompt, prompt_lengths.to(device)

    def group_limits(self, item: GenerationItem) -> tuple[int, int]:
        """(min, max) groups of r frames an item may generate."""
        return -(-item.min_frames // self.r), max(1, -(-item.max_frames // self.r))

    def item_noise(self, item: GenerationItem) -> tuple[Tensor, Tensor]:
        """All the noise an item can use, (max groups + 1, r, D) each, on the CPU."""
        return draw_noise(item.seed, self.group_limits(item)[1] + 1, self.r, self.dim)

    def _limits(self, items: list[GenerationItem]) -> tuple[Tensor, Tensor, int]:
        limits = [self.group_limits(it) for it in items]
        min_groups = torch.tensor([lo for lo, _ in limits], device=self.device)
        max_groups = torch.tensor([hi for _, hi in limits], device=self.device)
        return min_groups, max_groups, int(max_groups.max())

    def _noise(self, items: list[GenerationItem], groups: int) -> tuple[Tensor, Tensor]:
        """(groups, B, r, D) each: step-major, so the slice a step reads is contiguous and its
        layout does not depend on the batch's length (a compiled sampler is not recompiled)."""
        noise = torch.zeros(groups, len(items), self.r, self.dim)
        alt = torch.zeros_like(noise)
        for i, it in enumerate(items):
            n_i, a_i = self.item_noise(it)
            noise[: n_i.shape[0], i], alt[: a_i.shape[0], i] = n_i, a_i
        return noise.to(self.device), alt.to(self.device)

    # --- the loop ------------------------------------------------------------------------------
    # As a decorator on a generator, inference_mode is entered and left around each resumption, so
    # it never leaks into the consumer's code between yields (a `with` block around a yield would).
    @torch.inference_mode()
    def steps(self, items: list[GenerationItem], sampling: SamplingConfig) -> Iterator[tuple[Tensor, StepState]]:
        """Yield (group (B, r, D) fp32, state after the step) once per step until all items stop.
        Frames of item i in a step are real when ``state.alive[i]`` is true after that step."""
        if not items:
            return
        if any(len(it.text) == 0 for it in items):
            raise ConfigError("every item needs at least one text token")
        params = StepParams.from_config(sampling, self.lm.cfg.min_logstd)
        guided = params.guided
        B = len(items)
        with memory_guard(self.device, B * (2 if guided else 1)):
            min_groups, max_groups, g_max = self._limits(items)
            noise, alt = self._noise(items, g_max + 1)
            counter = torch.arange(g_max + 1, device=self.device)
            state = initial_state(B, self.dim, self.device)
            # On an accelerator, asking "is everyone done?" stalls the pipeline; ask less often.
            check_every = 1 if self.device.type == "cpu" else 8
            hidden, cache = self.prefill(items, guided, g_max + 1)
            hold = self.end_hold_groups(sampling)
            for n in range(g_max + 1):
                mu, logstd, stop = self.lm.heads(hidden[:, None])
                group, state = self._sample(
                    mu[:, 0], logstd[:, 0], stop[:, 0], noise[n], alt[n], counter[n],
                    min_groups, max_groups, state, params,
                )
                yield group, state
                if n == g_max or ((n + 1) % check_every == 0 and not bool(state.alive.any())):
                    break
                hidden = self.step((torch.cat([group, group]) if guided else group).to(self.lm_dtype), cache)
                if hold is not None:  # rows that have read their whole text stop within `hold` groups
                    assert cache.text is not None
                    ended = cache.text.reached_end()[:B]
                    max_groups = torch.where(ended, max_groups.clamp(max=n + 1 + hold), max_groups)

    def end_hold_groups(self, sampling: SamplingConfig) -> int | None:
        """``sampling.end_hold_seconds`` in groups, or None where it does not apply (off, or a model
        without the monotonic text window, whose reading position is not tracked)."""
        alignment = self.lm.alignment
        if sampling.end_hold_seconds is None or alignment is None or alignment.window <= 0:
            return None
        groups_per_second = self.model.config.audio.latent_rate / self.r
        return math.ceil(sampling.end_hold_seconds * groups_per_second)

    def _prefix(self, item: GenerationItem) -> KVCache:
        """The item's voice prefix cache, computed on first use and kept in its prefix_store."""
        store = item.prefix_store
        assert store is not None
        key = (self._token, self.lm_dtype)
        if key not in store:
            prompt = item.prompt.to(device=self.device, dtype=self.lm_dtype)[None]
            store[key] = self.lm.prefill_prompt(prompt)
        return store[key]

    # --- prefill and step: also used by the continuous-batching loop (inference/continuous.py) -----
    def prefill(self, items: list[GenerationItem], guided: bool, new_positions: int) -> tuple[Tensor, KVCache]:
        """The hidden states at BOS (rows: the items, then under guidance their unconditional rows, the
        same voice prompt without text) and a cache with room for ``new_positions`` steps.

        When every item has a ``prefix_store``, each row continues its voice's cached [prompt][SEP]
        with its own [text][BOS] (once per distinct (voice, text)), so batches, guidance and best-of-N
        candidates all reuse the prefix; else the whole left-padded batch is prefilled."""
        if not all(it.prefix_store is not None for it in items):
            return self.lm.prefill(*self._inputs(items, guided), room=new_positions)
        texts = [it.text for it in items] + ([[] for _ in items] if guided else [])
        owners = items + (items if guided else [])
        done: dict[tuple[int, tuple[int, ...]], tuple[Tensor, KVCache]] = {}
        for it, ids in zip(owners, texts, strict=True):
            key = (id(it.prefix_store), tuple(ids))
            if key not in done:
                tokens = torch.tensor([ids], dtype=torch.long, device=self.device).reshape(1, len(ids))
                done[key] = self.lm.prefill_text(tokens, self._prefix(it), room=0)
        rows = [done[(id(it.prefix_store), tuple(ids))] for it, ids in zip(owners, texts, strict=True)]
        first = torch.zeros(1, dtype=torch.long, device=self.device)
        return torch.cat([h for h, _ in rows]), gather([(c, first) for _, c in rows], new_positions)

    def step(self, fed: Tensor, cache: KVCache) -> Tensor:
        """One LM step (compiled when the generator is; the verified ``step_decoder`` when there is
        one) for rows (B, r, D) in the LM's dtype; returns their hidden states (B, dim)."""
        return self._step(fed, cache)

    def generate(self, items: list[GenerationItem], sampling: SamplingConfig) -> list[Generated]:
        """Generate every item to its end; returns u, z and how each one ended."""
        groups: list[Tensor] = []
        state: StepState | None = None
        for group, step_state in self.steps(items, sampling):
            groups.append(group)
            state = step_state
        assert state is not None
        B = len(items)
        u_all = torch.stack(groups, dim=1).reshape(B, -1, self.dim).float()
        lengths = (state.lengths * self.r).tolist()
        with torch.inference_mode(), memory_guard(self.device, B):
            u_list = [u_all[i, : lengths[i]] for i in range(B)]
            z_list = self.to_vae_latents(u_list)
        natural, stalled = state.natural_stop.tolist(), state.stalled.tolist()
        loglik = (state.loglik / state.lengths.clamp_min(1)).tolist()
        return [
            Generated(u=u_list[i].cpu(), z=z_list[i].cpu(), natural_stop=natural[i], stalled=stalled[i],
                      loglik=loglik[i])
            for i in range(B)
        ]

    def to_vae_latents(self, u_list: list[Tensor]) -> list[Tensor]:
        """Invert the per-frame flow for several sequences at once: u → z."""
        sizes = [u.shape[0] for u in u_list]
        if sum(sizes) == 0:
            return [torch.zeros(0, self.dim) for _ in u_list]
        flat = torch.cat([u.to(self.device, torch.float32) for u in u_list])
        # The flow always runs in fp32 (the TTS keeps the VAE and flow in fp32 at any LM dtype).
        return list(self.model.flow.inverse(flat).float().split(sizes))


def compare_steps(lm: LatentLM, other: StepDecoder, steps: int = 3, seed: int = 0) -> float:
    """Largest difference between ``other.step`` and ``LatentLM.step`` (hidden states, relative to
    their scale) on a random batch of two left-padded items, each from its own copy of one prefill."""
    device, dtype = lm.latent_in.weight.device, lm.latent_in.weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = lm.latent_dim
    text = torch.randint(0, lm.text_embedding.num_embeddings, (2, 5), generator=gen).to(device)
    prompt = torch.randn(2, 4 * lm.r, d, generator=gen).to(device=device, dtype=dtype)
    groups = torch.randn(steps, 2, lm.r, d, generator=gen).to(device=device, dtype=dtype)
    inputs = (text, torch.tensor([5, 2], device=device), prompt, torch.tensor([4 * lm.r, 2 * lm.r], device=device))
    worst = 0.0
    with torch.inference_mode():
        (_, a), (_, b) = lm.prefill(*inputs, room=steps), lm.prefill(*inputs, room=steps)
        for n in range(steps):
            ref, got = lm.step(groups[n], a).float(), other.step(groups[n], b).float()
            worst = max(worst, float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-6)))
    return worst

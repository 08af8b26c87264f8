"""Reference decoders that check the LM's own cached decoding (``LatentLM.prefill`` / ``step``).

- :func:`full_forward_generate`: ``LatentGenerator.generate`` with every step a teacher-forced
  full forward over everything generated so far (no cache at all). It has no monotonic text window.
- :func:`xtransformers_prefill` / :func:`xtransformers_step`: x-transformers' own cached forward
  (its KV cache, its rotary embeddings and masks), with the alignment block between the stacks
  read incrementally as in the LM's step, so it has the window too; :func:`step_difference`
  compares the LM's step with it on random inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor
from x_transformers.x_transformers import LayerIntermediates

from llamavoice.inference.generator import Generated, GenerationItem, LatentGenerator
from llamavoice.inference.sampling import SamplingConfig
from llamavoice.models.kv_cache import TextKeys
from llamavoice.models.lm import TARGET, LatentLM, _gather


# --- a teacher-forced full forward per step -----------------------------------------------------------
@dataclass
class _History:
    inputs: tuple[Tensor, ...]  # text, text lengths, prompt, prompt lengths (the generator's rows)
    fed: Tensor  # (B, groups * r, D) every group fed so far


def _full_forward_hidden(lm: LatentLM, history: _History) -> Tensor:
    """The hidden state after the fed groups, by a full forward (no cache)."""
    text, text_lengths, prompt, prompt_lengths = history.inputs
    n = history.fed.shape[1] // lm.r
    # One dummy group after the history: causal attention keeps it from touching position n.
    target = torch.cat([history.fed, torch.zeros_like(history.fed[:, : lm.r])], dim=1)
    lengths = torch.full_like(text_lengths, target.shape[1])
    return lm(text, text_lengths, prompt, prompt_lengths, target, lengths).hidden[:, n]


def full_forward_generate(gen: LatentGenerator, items: list[GenerationItem],
                          sampling: SamplingConfig) -> list[Generated]:
    """``gen.generate`` (same noise, sampling and stopping) with the LM's prefill and step replaced by
    full forwards. Voice prefix stores are not used."""
    ref = copy.copy(gen)  # the same model; only this copy's prefill and step are replaced

    def prefill(items: list[GenerationItem], guided: bool, new_positions: int) -> tuple[Tensor, _History]:
        inputs = gen._inputs(items, guided)
        history = _History(inputs, torch.zeros(inputs[0].shape[0], 0, gen.dim, device=gen.device, dtype=gen.lm_dtype))
        return _full_forward_hidden(gen.lm, history), history

    def step(fed: Tensor, history: _History) -> Tensor:
        history.fed = torch.cat([history.fed, fed], dim=1)
        return _full_forward_hidden(gen.lm, history)

    ref.prefill, ref.step = prefill, step
    return ref.generate(items, sampling)


# --- x-transformers' cached forward ---------------------------------------------------------------
@dataclass
class XCache:
    stacks: list[LayerIntermediates]  # x-transformers' cache of each decoder stack
    text: TextKeys | None
    pad_left: Tensor


def xtransformers_prefill(lm: LatentLM, text: Tensor, text_lengths: Tensor, prompt: Tensor,
                          prompt_lengths: Tensor) -> tuple[Tensor, XCache]:
    """The prefix up to BOS, left-padded, through x-transformers; the hidden state at BOS (B, dim)."""
    seg = lm.assemble(text, text_lengths, prompt, prompt_lengths, left_pad=True)
    hidden, lower = lm.decoder(seg.embeddings, seq_start_pos=seg.pad_left, return_hiddens=True)
    if lm.alignment is None:
        return hidden[:, -1], XCache([lower], None, seg.pad_left)
    text_keys = lm.alignment.text_keys(_gather(hidden, seg.text_index), seg.text_mask)
    read, _ = lm.alignment(hidden[:, -1:], text_keys)
    hidden = torch.cat([hidden[:, :-1], hidden[:, -1:] + read], dim=1)
    hidden, upper = lm.decoder_upper(hidden, seq_start_pos=seg.pad_left, return_hiddens=True)
    return hidden[:, -1], XCache([lower, upper], text_keys, seg.pad_left)


def xtransformers_step(lm: LatentLM, group: Tensor, cache: XCache) -> Tensor:
    """One group of r latents (B, r, D) through x-transformers' cached forward; the new hidden (B, dim)."""
    x = lm.embed_latents(rearrange(group, "b r d -> b 1 (r d)")) + lm.segment_embedding.weight[TARGET]
    stacks = []
    for i, stack in enumerate(lm._stacks()):
        if i == 1:  # between the stacks: the alignment block reads the text
            x = x + lm.alignment(x, cache.text)[0]
        x, new = stack(x, cache=cache.stacks[i], seq_start_pos=cache.pad_left, return_hiddens=True,
                       input_not_include_cache=True)
        stacks.append(new)
    cache.stacks = stacks
    return x[:, -1]


def step_difference(lm: LatentLM, steps: int = 3, seed: int = 0) -> float:
    """Largest difference between the LM's prefill + steps and x-transformers' (hidden states,
    relative to their scale) on a random left-padded batch of three: a long text (longer than the
    monotonic window), a short one and none (a guided batch's unconditional row). Runs in the LM's
    dtype and device."""
    device, dtype = lm.latent_in.weight.device, lm.latent_in.weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = lm.latent_dim
    text = torch.randint(0, lm.text_embedding.num_embeddings, (3, 12), generator=gen).to(device)
    text_lengths = torch.tensor([12, 2, 0], device=device)
    prompt = torch.randn(3, 4 * lm.r, d, generator=gen).to(device=device, dtype=dtype)
    prompt_lengths = torch.tensor([4 * lm.r, 2 * lm.r, 3 * lm.r], device=device)
    groups = torch.randn(steps, 3, lm.r, d, generator=gen).to(device=device, dtype=dtype)
    inputs = (text, text_lengths, prompt, prompt_lengths)
    with torch.inference_mode():
        ref, ref_cache = xtransformers_prefill(lm, *inputs)
        got, cache = lm.prefill(*inputs, room=steps)
        pairs = [(ref, got)]
        for n in range(steps):
            pairs.append((xtransformers_step(lm, groups[n], ref_cache), lm.step(groups[n], cache)))
    return max(float((a.float() - b.float()).abs().max() / a.float().abs().max().clamp_min(1e-6)) for a, b in pairs)

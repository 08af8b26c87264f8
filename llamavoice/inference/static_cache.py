"""A lean single-step decoder with a preallocated KV cache, over the LM's own weights.

x-transformers' cached step is general: every step it concatenates the whole cache, recomputes
rotary embeddings for every position and re-rotates every cached key, builds masks, and walks a
long chain of optional features. For one new frame of a small model that Python and memory
traffic costs about as much as the matrix products. This module does the same arithmetic for the
configuration LatentLM uses (pre-norm RMSNorm, grouped-query attention with partial rotary
embeddings, SwiGLU feed-forward, final RMSNorm) the way gpt-fast does it: keys are stored already
rotated in buffers allocated once per sequence, each step writes one slot and attends over the
filled part.

It reads the weights straight from the x-transformers modules (nothing is copied or converted),
and :func:`check_static_decoder` compares it with ``LatentLM.step`` on random inputs before it is
used: if x-transformers ever computes something different, generation falls back to
``LatentLM.step`` with a warning instead of producing different audio.

An LM with an alignment block (two decoder stacks) is walked as one list of layers with the block
between the stacks; its text keys are fixed after the prefill, so they sit in the state as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llamavoice.models.lm import TARGET, LatentLM, LMCache, TextKeys

KV = tuple[Tensor, Tensor]


@dataclass
class StaticState:
    keys: list[Tensor]  # per layer (B, kv_heads, capacity, dim_head), rotated
    values: list[Tensor]  # per layer (B, kv_heads, capacity, dim_head)
    valid: Tensor  # (B, capacity) bool: real (not left-padding) positions
    offsets: Tensor  # (B,) long: slot - offset = the position a row's token is rotated at
    length: int  # slots filled so far
    text: TextKeys | None = None  # the alignment block's text keys (LMs with one)


@dataclass
class RowCache:
    """One row's prefill: unrotated (k, v) per layer (both stacks, in order) and its text keys."""

    kv: list[KV]
    text: TextKeys | None


class StaticCacheDecoder:
    """One new position per call for a batch, with a static KV cache (see module docstring)."""

    def __init__(self, lm: LatentLM, attention: str = "sdpa"):
        self.lm = lm
        # "math": attention written out (matmul, masked softmax, matmul) instead of torch's fused
        # scaled_dot_product_attention kernels.
        self.math_attention = attention == "math"
        self.attn_layers = []
        self.ff_layers = []
        stacks = lm._stacks()
        for decoder in stacks:
            for kind, (norms, block, _residual) in zip(decoder.layer_types, decoder.layers, strict=True):
                (self.attn_layers if kind == "a" else self.ff_layers).append((norms[0], block))
        # The alignment block runs before this layer index (the first layer of the upper stack).
        self.align_before = len(stacks[0].layer_types) // 2 if lm.alignment is not None else None
        first = self.attn_layers[0][1]
        self.heads = first.heads
        self.kv_heads = first.kv_heads
        self.dim_head = first.to_q.out_features // first.heads
        self.scale = first.attend.scale if first.attend.scale is not None else self.dim_head**-0.5
        self.rotary = stacks[0].rotary_pos_emb  # every stack's rotary embedding is built the same
        self.rot_dim = self.rotary.inv_freq.shape[0] * 2
        self.final_norm = stacks[-1].final_norm

    @staticmethod
    def supported(lm: LatentLM) -> bool:
        """Whether the LM has exactly the layer pattern this decoder implements."""
        stacks = lm._stacks()
        try:
            ok = True
            for d in stacks:
                kinds = "".join(d.layer_types)
                rotary = d.rotary_pos_emb
                ok = ok and kinds == "af" * (len(kinds) // 2) and rotary is not None and rotary.scale is None
                ok = ok and rotary.interpolation_factor == 1.0 and d.pre_norm and not d.residual_attn
                for kind, (norms, block, residual) in zip(d.layer_types, d.layers, strict=True):
                    ok = ok and type(norms[0]).__name__ == "RMSNorm" and norms[1] is None and norms[2] is None
                    ok = ok and getattr(residual, "residual_scale", None) is None
                    if kind == "a":
                        ok = ok and not block.qk_norm and block.num_mem_kv == 0
                        ok = ok and block.rotate_num_heads == block.heads and block.to_q.bias is None
                        ok = ok and block.to_out.bias is None and block.head_scale is False
            # Only the last stack normalizes its output; a lower stack hands on the raw residual stream.
            ok = ok and all(type(d.final_norm).__name__ == "Identity" for d in stacks[:-1])
            return bool(ok) and type(stacks[-1].final_norm).__name__ == "RMSNorm"
        except (AttributeError, TypeError, ValueError):
            return False

    # --- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _rms(norm, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * norm.scale * (norm.g + float(norm.unit_offset))

    def _rotate(self, t: Tensor, positions: Tensor) -> Tensor:
        """Rotary embedding of (B, H, n, d) at ``positions``: (n,) shared by the batch, or (B,) with
        n = 1. Computed in fp32 like x-transformers (adjacent pairs share a frequency; only the
        first ``rot_dim`` features rotate)."""
        freqs = positions.float()[:, None] * self.rotary.inv_freq.float()[None]  # (n or B, rot/2)
        cos, sin = freqs.cos().repeat_interleave(2, -1), freqs.sin().repeat_interleave(2, -1)
        if positions.shape[0] == t.shape[0] and t.shape[-2] == 1:
            cos, sin = cos[:, None, None], sin[:, None, None]  # per row
        x, rest = t[..., : self.rot_dim].float(), t[..., self.rot_dim :]
        pairs = x.unflatten(-1, (-1, 2))
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = x * cos + half * sin
        return torch.cat((out.to(t.dtype), rest), dim=-1)

    # --- cache ---------------------------------------------------------------------------------
    def start(self, cache: LMCache, pad_left: Tensor, new_positions: int) -> StaticState:
        """Move an LM prefill cache (unrotated keys) into rotated static buffers with room for
        ``new_positions`` more positions."""
        kvs = self.cache_rows(cache).kv
        length = kvs[0][0].shape[-2]
        B = kvs[0][0].shape[0]
        capacity = length + new_positions
        device = kvs[0][0].device
        positions = torch.arange(length, device=device)
        keys, values = [], []
        for k, v in kvs:
            kb = k.new_zeros(B, self.kv_heads, capacity, self.dim_head)
            vb = v.new_zeros(B, self.kv_heads, capacity, self.dim_head)
            kb[:, :, :length] = self._rotate(k, positions)
            vb[:, :, :length] = v
            keys.append(kb)
            values.append(vb)
        valid = torch.arange(capacity, device=device)[None] >= pad_left.to(device)[:, None]
        # x-transformers rotates at padded positions (slot = position); relative attention makes
        # that equivalent to rotating each row from 0.
        # The state owns its text keys (their step counter advances with this state, not the cache's).
        text = dataclasses.replace(cache.text) if cache.text is not None else None
        return StaticState(keys, values, valid, torch.zeros(B, dtype=torch.long, device=device), length, text)

    def start_rows(self, row_caches: list[RowCache], new_positions: int) -> StaticState:
        """Assemble buffers from per-row caches (each a list over layers of unrotated (k, v) of shape
        (1, kv_heads, length_b, dim_head)), left-padded to a common length. Each row's keys are rotated
        at its own positions 0..length_b-1, so a row computes exactly what it would alone."""
        rows = [row.kv for row in row_caches]
        lengths = [row[0][0].shape[-2] for row in rows]
        B, length = len(rows), max(lengths)
        capacity = length + new_positions
        k0 = rows[0][0][0]
        device = k0.device
        offsets = torch.tensor([length - n for n in lengths], device=device)
        keys, values = [], []
        for layer in range(len(rows[0])):
            kb = k0.new_zeros(B, self.kv_heads, capacity, self.dim_head)
            vb = k0.new_zeros(B, self.kv_heads, capacity, self.dim_head)
            for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
                k, v = row[layer]
                kb[b, :, length - n : length] = self._rotate(k, torch.arange(n, device=device))[0]
                vb[b, :, length - n : length] = v[0]
            keys.append(kb)
            values.append(vb)
        valid = torch.arange(capacity, device=device)[None] >= offsets[:, None]
        text = stack_text_keys([row.text for row in row_caches]) if row_caches[0].text is not None else None
        return StaticState(keys, values, valid, offsets, length, text)

    @staticmethod
    def cache_rows(cache: LMCache) -> RowCache:
        """The per-layer unrotated (k, v) of an LM cache, over all its stacks, and its text keys."""
        return RowCache([inter.cached_kv for c in cache.stacks for inter in c.attn_intermediates], cache.text)

    # --- one step ------------------------------------------------------------------------------
    def step(self, group: Tensor, state: StaticState) -> Tensor:
        """Feed one group of r latents (B, r, D) at the next position; returns the hidden (B, dim)."""
        lm = self.lm
        B = group.shape[0]
        x = lm.embed_latents(group.reshape(B, 1, -1)) + lm.segment_embedding.weight[TARGET]
        p = state.length
        position = p - state.offsets  # (B,) each row's own position
        mask = state.valid[:, None, None, : p + 1]
        group_size = self.heads // self.kv_heads
        for i, ((attn_norm, attn), (ff_norm, ff)) in enumerate(zip(self.attn_layers, self.ff_layers, strict=True)):
            if i == self.align_before:
                x = x + lm.alignment(x, state.text)[0]
            h = self._rms(attn_norm, x)
            q = attn.to_q(h).view(B, 1, self.heads, self.dim_head).transpose(1, 2)
            k = attn.to_k(h).view(B, 1, self.kv_heads, self.dim_head).transpose(1, 2)
            v = attn.to_v(h).view(B, 1, self.kv_heads, self.dim_head).transpose(1, 2)
            state.keys[i][:, :, p : p + 1] = self._rotate(k, position)
            state.values[i][:, :, p : p + 1] = v
            q = self._rotate(q, position)
            # x-transformers repeats kv heads as (r kvh): query head h reads kv head h % kv_heads.
            # Fold the queries that share a kv head into the query-length axis instead of copying K/V.
            q = q.view(B, group_size, self.kv_heads, self.dim_head).transpose(1, 2)  # (B, kvh, g, d)
            keys, values = state.keys[i][:, :, : p + 1], state.values[i][:, :, : p + 1]
            if self.math_attention:
                scores = (q @ keys.transpose(-1, -2)) * self.scale
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
                out = scores.softmax(dim=-1) @ values
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self.scale)
            out = out.transpose(1, 2).reshape(B, 1, self.heads * self.dim_head)
            x = x + attn.to_out(out)
            x = x + ff(self._rms(ff_norm, x))
        state.length = p + 1
        return self._rms(self.final_norm, x)[:, -1]


def stack_text_keys(parts: list[TextKeys]) -> TextKeys:
    """Text keys of several row groups (each (B_i, heads, L_i, d)) → one batch right-padded to the
    longest text, with its mask."""
    L = max(t.keys.shape[-2] for t in parts)
    pad = lambda t: F.pad(t, (0, 0, 0, L - t.shape[-2]))  # noqa: E731
    return TextKeys(torch.cat([pad(t.keys) for t in parts]), torch.cat([pad(t.values) for t in parts]),
                    torch.cat([F.pad(t.mask, (0, L - t.mask.shape[-1])) for t in parts]),
                    torch.cat([t.next_query for t in parts]), torch.cat([t.position for t in parts]))


def check_static_decoder(lm: LatentLM, steps: int = 3, seed: int = 0, attention: str = "sdpa") -> float:
    """Largest difference between the static decoder and ``LatentLM.step`` (hidden states, relative to
    their scale) on a random batch of two left-padded items. Runs in the LM's dtype and device."""
    device = lm.latent_in.weight.device
    dtype = lm.latent_in.weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = lm.latent_dim
    vocab = lm.text_embedding.num_embeddings
    text = torch.randint(0, vocab, (2, 5), generator=gen).to(device)
    text_lengths = torch.tensor([5, 2], device=device)
    prompt = torch.randn(2, 4 * lm.r, d, generator=gen).to(device=device, dtype=dtype)
    prompt_lengths = torch.tensor([4 * lm.r, 2 * lm.r], device=device)
    groups = torch.randn(steps, 2, lm.r, d, generator=gen).to(device=device, dtype=dtype)
    fast = StaticCacheDecoder(lm, attention)
    worst = 0.0
    with torch.inference_mode():
        _, cache, pad_left = lm.prefill(text, text_lengths, prompt, prompt_lengths)
        state = fast.start(cache, pad_left, steps)
        for n in range(steps):
            ref, cache = lm.step(groups[n], cache, pad_left)
            got = fast.step(groups[n], state)
            diff = (ref.float() - got.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)
            worst = max(worst, float(diff))
    return worst

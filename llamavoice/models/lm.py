"""The latent LM: a Llama decoder (x-transformers) that predicts flow-space latents u.

Sequence per item: ``[prompt latents][SEP][text tokens][BOS][target latents]`` with a segment
embedding (prompt / text / target) added to every position. The voice prompt comes first so that
the KV cache of ``[prompt][SEP]`` can be computed once per voice and reused for every sentence
(see ``prefill_prompt``); the text then sits right before the speech it describes. Latents enter in groups of
``r = reduction_factor`` frames (one position per group). The hidden state at BOS and at every
target group feeds two heads:

- a Gaussian head giving μ, log σ for the *next* r frames,
- a stop head: at the position after the last group, "stop" is the target.

So for a target of N groups there are N + 1 output positions: N Gaussian predictions and N + 1
stop decisions (N "continue", one "stop").

Two options help a small model learn to read the text with little compute (``LMConfig``):

- ``prenet_dim``: the fed-back latents pass a narrow ReLU prenet with dropout, so copying the
  previous frame is harder than reading the text;
- ``align_layer``: the decoder is split in two stacks; between them an alignment block lets every
  output position attend to the text positions only (their hidden states at that depth) and adds
  what it read to the residual stream. Training biases it with an annealed beta-binomial prior
  and a guided-attention loss, so it learns a monotonic text-to-speech alignment early. Its keys
  are fixed once the text is prefilled, so at inference it costs one small attention per step.

Inference is the model's own: ``prefill`` (a left-padded batch) or ``prefill_prompt`` once per voice
then ``prefill_text`` per sentence fill a :class:`~llamavoice.models.kv_cache.KVCache`, and ``step``
writes one slot per group (see "incremental decoding" below).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from x_transformers import Decoder

from llamavoice.config import LMConfig
from llamavoice.models.kv_cache import KVCache, TextKeys

TEXT, PROMPT, TARGET = 0, 1, 2
# Keeps a decoder layer's new rotated keys and values, returns all it attends over (see LatentLM._layers).
KVStore = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class LMOutput:
    mu: Tensor  # (B, N*r, D) prediction for each target frame, fp32
    logstd: Tensor  # (B, N*r, D), fp32, clamped
    stop_logits: Tensor  # (B, N + 1), fp32
    hidden: Tensor  # (B, N + 1, dim) decoder states at the output positions
    alignment: Tensor | None = None  # (B, heads, N + 1, L) alignment-block attention over the text, fp32


def beta_binomial_log_prior(text_lengths: Tensor, groups: Tensor, n_out: int, n_text: int) -> Tensor:
    """log P(text position j | output position k) of a beta-binomial prior whose mode moves along the
    diagonal (RAD-TTS / T5-TTS), (B, n_out, n_text); positions past an item's lengths get 0."""
    L = text_lengths.clamp(min=1).float()[:, None, None]
    N = groups.float()[:, None, None] + 1.0  # output positions 0..N
    k = torch.arange(n_out, device=groups.device, dtype=torch.float32)[None, :, None]
    j = torch.arange(n_text, device=groups.device, dtype=torch.float32)[None, None, :]
    a, b, n = k + 1.0, N - k, L - 1.0
    a, b = a.clamp(min=1e-3), b.clamp(min=1e-3)
    jc = torch.minimum(j, n)
    log_choose = torch.lgamma(n + 1) - torch.lgamma(jc + 1) - torch.lgamma(n - jc + 1)
    log_beta = lambda x, y: torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)  # noqa: E731
    out = log_choose + log_beta(jc + a, n - jc + b) - log_beta(a, b)
    valid = (j < L) & (k < N)
    return torch.where(valid, out, torch.zeros_like(out))


class TextAlignment(nn.Module):
    """Output positions attend to the text positions only; the result joins the residual stream."""

    def __init__(self, dim: int, heads: int, offset_range: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"lm.align_heads={heads} must divide lm.dim={dim}")
        self.heads = heads
        self.offset_range = offset_range
        self.offset_bias = nn.Parameter(torch.zeros(heads, 2 * offset_range + 1)) if offset_range else None
        # Inference only (not a weight): > 0 lets each new query read only text positions
        # [p - 1, p + window] around the position p it read last, and p never moves back. A
        # monotonic reader cannot loop back over words or skip far ahead (see generator.py).
        self.window = 0
        self.dim_head = dim // heads
        self.norm_query = nn.RMSNorm(dim)
        self.norm_text = nn.RMSNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def text_keys(self, text_hidden: Tensor, mask: Tensor) -> TextKeys:
        k, v = self.to_kv(self.norm_text(text_hidden)).chunk(2, dim=-1)
        split = lambda t: rearrange(t, "b l (h d) -> b h l d", h=self.heads)  # noqa: E731
        zeros = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
        return TextKeys(split(k), split(v), mask, zeros, zeros.clone())

    def _offset_bias(self, steps: Tensor, text_len: int) -> Tensor:
        """(B, n) output steps → (B, heads, n, L) learned bias of (text position - step)."""
        offset = torch.arange(text_len, device=steps.device)[None, None] - steps[..., None]
        index = offset.clamp(-self.offset_range, self.offset_range) + self.offset_range
        return self.offset_bias.float()[:, index].permute(1, 0, 2, 3)

    def forward(self, hidden: Tensor, text: TextKeys, log_prior: Tensor | None = None,
                prior_weight: float = 0.0, steps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """hidden (B, n, dim) → (what each position read (B, n, dim), the learned attention
        (B, heads, n, L) fp32). Items without text (classifier-free guidance) read nothing.

        With a prior, the positions read through the prior-biased attention, but the attention
        returned (for the alignment loss and diagonality) is the learned one alone: the loss must
        teach the block to align by itself before the prior fades, not reward the prior's work.

        ``steps`` (B, n): the output step of each query (training); None: incremental decoding, the
        queries continue from ``text.next_query``, which advances."""
        q = rearrange(self.to_q(self.norm_query(hidden)), "b n (h d) -> b h n d", h=self.heads)
        scores = (q.float() @ text.keys.float().transpose(-1, -2)) / math.sqrt(self.dim_head)
        incremental = steps is None and text.next_query is not None
        if incremental:
            steps = text.next_query[:, None] + torch.arange(hidden.shape[1], device=hidden.device)[None]
            text.next_query = text.next_query + hidden.shape[1]
        if self.offset_bias is not None:
            scores = scores + self._offset_bias(steps, scores.shape[-1])
        has_text = text.mask.any(dim=-1)[:, None, None, None]
        outside = ~text.mask[:, None, None, :]
        windowed = incremental and self.window > 0 and text.position is not None and scores.shape[-1] > 0
        if windowed:
            j = torch.arange(scores.shape[-1], device=scores.device)[None]
            near = (j >= text.position[:, None] - 1) & (j <= text.position[:, None] + self.window)
            outside = outside | ~near[:, None, None, :]
        learned = scores.masked_fill(outside, torch.finfo(scores.dtype).min).softmax(dim=-1) * has_text
        attn = learned
        if log_prior is not None and prior_weight > 0:
            biased = (scores + prior_weight * log_prior[:, None]).masked_fill(outside, torch.finfo(scores.dtype).min)
            attn = biased.softmax(dim=-1) * has_text
        if windowed:
            text.position = torch.maximum(text.position, attn[:, :, -1].mean(dim=1).argmax(dim=-1))
        out = rearrange(attn.to(text.values.dtype) @ text.values, "b h n d -> b n (h d)")
        return self.to_out(out), learned


@dataclass
class Segments:
    """Where each part of each item sits in the assembled (padded) sequence."""

    embeddings: Tensor  # (B, S, dim)
    lengths: Tensor  # (B,) real positions per item
    output_index: Tensor  # (B, N + 1) positions of BOS and each target group
    output_valid: Tensor  # (B, N + 1) which of them are real (k <= the item's groups)
    text_index: Tensor  # (B, L) positions of the text tokens (clamped past an item's text)
    text_mask: Tensor  # (B, L) real text tokens
    pad_left: Tensor  # (B,) left padding (0 when right-padded)


class LatentLM(nn.Module):
    def __init__(self, cfg: LMConfig, latent_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = latent_dim
        self.r = cfg.reduction_factor
        dim = cfg.dim
        self.text_embedding = nn.Embedding(vocab_size, dim)
        if cfg.prenet_dim > 0:
            p, drop = cfg.prenet_dim, cfg.prenet_dropout
            self.prenet = nn.Sequential(
                nn.Linear(latent_dim * self.r, p), nn.ReLU(), nn.Dropout(drop),
                nn.Linear(p, p), nn.ReLU(), nn.Dropout(drop),
            )
            self.latent_in = nn.Linear(p, dim)
        else:
            self.prenet = None
            self.latent_in = nn.Linear(latent_dim * self.r, dim)
        self.segment_embedding = nn.Embedding(3, dim)
        self.sep = nn.Parameter(torch.randn(dim) * 0.02)
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        if not 0 <= cfg.align_layer < cfg.depth:
            raise ValueError(f"lm.align_layer={cfg.align_layer} must be in [0, depth={cfg.depth}) (0: no alignment)")

        def stack(depth: int, final_norm: bool) -> Decoder:
            return Decoder(
                dim=dim,
                depth=depth,
                heads=cfg.heads,
                attn_dim_head=dim // cfg.heads,
                attn_kv_heads=cfg.kv_heads,
                rotary_pos_emb=True,
                rotary_emb_dim=max(dim // cfg.heads // 2, 32),  # x-transformers warns below 32
                attn_flash=True,
                ff_glu=True,
                ff_swish=True,
                ff_mult=cfg.ff_mult,
                ff_no_bias=True,
                attn_dropout=cfg.dropout,
                ff_dropout=cfg.dropout,
                use_rmsnorm=True,
                pre_norm_has_final_norm=final_norm,
            )

        # Without alignment: one stack (``decoder``), as in every checkpoint before the option existed.
        # With it: ``decoder`` holds the first align_layer layers, ``decoder_upper`` the rest.
        if cfg.align_layer:
            self.decoder = stack(cfg.align_layer, final_norm=False)
            self.alignment = TextAlignment(dim, cfg.align_heads, cfg.align_offset_range)
            self.decoder_upper = stack(cfg.depth - cfg.align_layer, final_norm=True)
        else:
            self.decoder = stack(cfg.depth, final_norm=True)
            self.alignment = None
            self.decoder_upper = None
        self.gaussian_head = nn.Linear(dim, 2 * latent_dim * self.r)
        self.stop_head = nn.Linear(dim, 1)
        self._init_decoding()

    # --- sequence assembly ---------------------------------------------------------------------
    def embed_latents(self, grouped: Tensor) -> Tensor:
        """(B, n, r * D) grouped latents → (B, n, dim), through the prenet when there is one."""
        return self.latent_in(self.prenet(grouped) if self.prenet is not None else grouped)

    def group(self, latents: Tensor) -> Tensor:
        """(B, T, D) with T a multiple of r → (B, T / r, r * D)."""
        return rearrange(latents, "b (n r) d -> b n (r d)", r=self.r)

    def num_groups(self, frames: Tensor) -> Tensor:
        return torch.div(frames + self.r - 1, self.r, rounding_mode="floor")

    def assemble(
        self,
        text: Tensor,
        text_lengths: Tensor,
        prompt: Tensor,
        prompt_lengths: Tensor,
        target: Tensor | None = None,
        target_lengths: Tensor | None = None,
        left_pad: bool = False,
    ) -> Segments:
        """Scatter each item's parts into one padded sequence without a Python loop per item.

        ``prompt`` and ``target`` are u-latents (B, T, D); lengths count frames. Prompt frames past
        a multiple of r are dropped; a target's last partial group is zero-filled.
        """
        B, device = text.shape[0], text.device
        dim = self.cfg.dim
        seg = self.segment_embedding.weight
        prompt_groups = torch.div(prompt_lengths, self.r, rounding_mode="floor")
        prompt = prompt[:, : (prompt.shape[1] // self.r) * self.r]
        ones = torch.ones_like(text_lengths)
        parts = [
            (self.embed_latents(self.group(prompt)) + seg[PROMPT], prompt_groups),
            (self.sep.expand(B, 1, dim) + seg[TEXT], ones),
            (self.text_embedding(text) + seg[TEXT], text_lengths),
            (self.bos.expand(B, 1, dim) + seg[TARGET], ones),
        ]
        if target is not None:
            assert target_lengths is not None
            pad = (-target.shape[1]) % self.r
            target = nn.functional.pad(target, (0, 0, 0, pad))
            parts.append((self.embed_latents(self.group(target)) + seg[TARGET], self.num_groups(target_lengths)))

        lengths = sum(n for _, n in parts)
        total = int(lengths.max())
        pad_left = (total - lengths) if left_pad else torch.zeros_like(lengths)
        # One spare slot at the end swallows the padded elements of every part.
        out = torch.zeros(B, total + 1, dim, device=device, dtype=parts[0][0].dtype)
        offset = pad_left.clone()
        starts = []
        for x, n in parts:
            steps = torch.arange(x.shape[1], device=device)
            index = offset[:, None] + steps[None]
            index = torch.where(steps[None] < n[:, None], index, total)
            out.scatter_(1, index[..., None].expand(-1, -1, dim), x.to(out.dtype))
            starts.append(offset.clone())
            offset = offset + n
        out = out[:, :total]
        text_start, bos_position = starts[2], starts[3]
        groups = self.num_groups(target_lengths) if target is not None else torch.zeros_like(text_lengths)
        k = torch.arange(1 + int(groups.max()), device=device)[None]
        output_index = (bos_position[:, None] + k).clamp(max=total - 1)
        j = torch.arange(text.shape[1], device=device)[None]
        text_index = (text_start[:, None] + j).clamp(max=total - 1)
        return Segments(out, lengths, output_index, k <= groups[:, None], text_index, j < text_lengths[:, None],
                        pad_left)

    # --- heads -----------------------------------------------------------------------------------
    def heads(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden (B, n, dim) → μ, log σ (B, n, r, D) and stop logits (B, n), all fp32."""
        params = self.gaussian_head(hidden).float()
        params = rearrange(params, "b n (r two d) -> b n r two d", r=self.r, two=2)
        mu, logstd = params.unbind(dim=-2)
        logstd = logstd.clamp(self.cfg.min_logstd, self.cfg.max_logstd)
        return mu, logstd, self.stop_head(hidden).float().squeeze(-1)

    # --- full forward (training) -------------------------------------------------------------------
    def forward(
        self,
        text: Tensor,
        text_lengths: Tensor,
        prompt: Tensor,
        prompt_lengths: Tensor,
        target: Tensor,
        target_lengths: Tensor,
        prior_weight: float = 0.0,
    ) -> LMOutput:
        """Teacher-forced forward. ``target`` (B, T, D) are u-latents of the utterance to speak.
        ``prior_weight`` scales the alignment block's beta-binomial prior (training only)."""
        seg = self.assemble(text, text_lengths, prompt, prompt_lengths, target, target_lengths)
        mask = torch.arange(seg.embeddings.shape[1], device=text.device)[None] < seg.lengths[:, None]
        hidden = self.decoder(seg.embeddings, mask=mask)
        alignment = None
        if self.alignment is not None:
            log_prior = None
            if prior_weight > 0:
                log_prior = beta_binomial_log_prior(text_lengths, self.num_groups(target_lengths),
                                                    seg.output_index.shape[1], text.shape[1])
            hidden, alignment = self._read_text(hidden, seg, log_prior, prior_weight)
            hidden = self.decoder_upper(hidden, mask=mask)
        hidden = _gather(hidden, seg.output_index)
        mu, logstd, stop = self.heads(hidden)
        # Output position k predicts group k; the last position only decides "stop".
        mu = rearrange(mu[:, :-1], "b n r d -> b (n r) d")[:, : target.shape[1]]
        logstd = rearrange(logstd[:, :-1], "b n r d -> b (n r) d")[:, : target.shape[1]]
        return LMOutput(mu=mu, logstd=logstd, stop_logits=stop, hidden=hidden, alignment=alignment)

    def _read_text(self, hidden: Tensor, seg: Segments, log_prior: Tensor | None = None,
                   prior_weight: float = 0.0) -> tuple[Tensor, Tensor]:
        """The alignment block over a whole assembled sequence: every output position reads the text
        and adds it to its residual stream. Returns the new hidden (B, S, dim) and the attention."""
        text = self.alignment.text_keys(_gather(hidden, seg.text_index), seg.text_mask)
        steps = torch.arange(seg.output_index.shape[1], device=hidden.device).expand_as(seg.output_index)
        read, attn = self.alignment(_gather(hidden, seg.output_index), text, log_prior, prior_weight, steps)
        read = read * seg.output_valid[..., None]  # clamped indices of finished items must add nothing
        index = seg.output_index[..., None].expand(-1, -1, hidden.shape[-1])
        return hidden.scatter_add(1, index, read.to(hidden.dtype)), attn

    # --- incremental decoding (inference) ----------------------------------------------------------
    # gpt-fast style: the cache (models/kv_cache.py) holds rotated keys in preallocated buffers; a
    # prefill writes many slots, a step one. The arithmetic is the x-transformers Decoder's for the
    # configuration built above (pre-norm RMSNorm, grouped-query attention with partial rotary
    # embeddings, SwiGLU feed-forward, final RMSNorm), read straight from its modules; the tests
    # check it against the teacher-forced forward and x-transformers' own cached forward.
    def _stacks(self) -> list[Decoder]:
        return [self.decoder] if self.decoder_upper is None else [self.decoder, self.decoder_upper]

    def _init_decoding(self) -> None:
        blocks = []
        for decoder in self._stacks():
            kinds = "".join(decoder.layer_types)
            if kinds != "af" * (len(kinds) // 2) or not decoder.pre_norm:
                raise ValueError(f"unexpected x-transformers layer layout {kinds!r}")
            layers = list(decoder.layers)
            for (attn_norms, attn, _), (ff_norms, ff, _) in zip(layers[0::2], layers[1::2], strict=True):
                blocks.append((attn_norms[0], attn, ff_norms[0], ff))
        # Plain attributes (not submodules): the same modules, reached in decoding order.
        self._blocks = tuple(blocks)
        # The alignment block runs before this layer (the first of the upper stack); None: no block.
        self.align_before = self.cfg.align_layer if self.alignment is not None else None
        first = blocks[0][1]
        self.kv_heads = first.kv_heads
        self.dim_head = first.to_q.out_features // first.heads
        self._scale = first.attend.scale if first.attend.scale is not None else self.dim_head**-0.5
        self._rot_dim = self.decoder.rotary_pos_emb.inv_freq.shape[0] * 2
        # Inference only (not a weight): "sdpa" runs torch's fused scaled_dot_product_attention,
        # "math" writes attention out (matmul, masked softmax, matmul), as the exported ONNX step does.
        self.attention = "sdpa"

    # Properties, not attributes: a module assigned to an attribute would join the state dict twice.
    @property
    def _rotary(self) -> nn.Module:
        return self.decoder.rotary_pos_emb  # every stack's rotary embedding is built the same

    @property
    def _final_norm(self) -> nn.Module:
        return self._stacks()[-1].final_norm

    def new_cache(self, offsets: Tensor, capacity: int) -> KVCache:
        """An empty cache for ``len(offsets)`` rows of ``capacity`` slots (row b starts at slot offsets[b])."""
        return KVCache.allocate(len(self._blocks), offsets, capacity, self.kv_heads, self.dim_head,
                                self.latent_in.weight)

    @staticmethod
    def _rms(norm: nn.Module, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) * norm.scale * (norm.g + float(norm.unit_offset))

    def _rotation(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin (B, 1, n, rot_dim) of the rotary embedding at positions (B, n), in fp32 like
        x-transformers (adjacent feature pairs share a frequency)."""
        freqs = positions.float()[..., None] * self._rotary.inv_freq.float()  # (B, n, rot/2)
        return freqs.cos().repeat_interleave(2, -1)[:, None], freqs.sin().repeat_interleave(2, -1)[:, None]

    def _rotate(self, t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate the first ``rot_dim`` features of t (B, heads, n, d); the rest pass unchanged."""
        x, rest = t[..., : self._rot_dim].float(), t[..., self._rot_dim :]
        pairs = x.unflatten(-1, (-1, 2))
        half = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat(((x * cos + half * sin).to(t.dtype), rest), dim=-1)

    def _layers(self, x: Tensor, rotation: tuple[Tensor, Tensor], mask: Tensor, store: KVStore,
                layers: range) -> Tensor:
        """x (B, n, dim) through decoder ``layers``. ``mask`` (B, 1, 1 or groups * n, S) says which of
        the S attended slots each query sees; ``store(layer, k, v)`` keeps a layer's new rotated keys
        and values and returns all S it attends over."""
        B, n, _ = x.shape
        kvh, d = self.kv_heads, self.dim_head
        g = self.cfg.heads // kvh
        for i in layers:
            attn_norm, attn, ff_norm, ff = self._blocks[i]
            h = self._rms(attn_norm, x)
            q = self._rotate(attn.to_q(h).view(B, n, -1, d).transpose(1, 2), *rotation)
            k = self._rotate(attn.to_k(h).view(B, n, kvh, d).transpose(1, 2), *rotation)
            keys, values = store(i, k, attn.to_v(h).view(B, n, kvh, d).transpose(1, 2))
            # x-transformers repeats kv heads as (r kvh): query head h reads kv head h % kv_heads.
            # Fold the queries that share a kv head into the query axis instead of copying K/V.
            q = q.view(B, g, kvh, n, d).transpose(1, 2).reshape(B, kvh, g * n, d)
            if self.attention == "math":
                scores = (q @ keys.transpose(-1, -2)) * self._scale
                out = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(dim=-1) @ values
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=self._scale)
            out = out.view(B, kvh, g, n, d).permute(0, 3, 2, 1, 4).reshape(B, n, g * kvh * d)
            x = x + attn.to_out(out)
            x = x + ff(self._rms(ff_norm, x))
        return x

    def _fill(self, cache: KVCache, x: Tensor, text: tuple[Tensor, Tensor] | None) -> Tensor:
        """Write the positions x (B, n, dim) into the next n slots; returns the hidden state (B, dim)
        at the last one, which is an output position (BOS) when ``text`` = (index (B, L) of the text
        positions in x, their mask (B, L)) is given: with an alignment block it reads the text."""
        B, n, _ = x.shape
        p = cache.length
        slot = torch.arange(p, p + n, device=x.device)[:, None]
        key = torch.arange(p + n, device=x.device)[None]
        # Causal over the real slots; a padding query sees itself, so no softmax row is empty.
        see = (key <= slot) & (cache.valid[:, None, : p + n] | (key == slot))  # (B, n, p + n)
        g = self.cfg.heads // self.kv_heads
        mask = see[:, None, None].expand(B, 1, g, n, p + n).reshape(B, 1, g * n, p + n)
        rotation = self._rotation(cache.positions(n))
        depth = len(self._blocks)
        if self.alignment is None:
            x = self._layers(x, rotation, mask, cache.store, range(depth))
        else:
            x = self._layers(x, rotation, mask, cache.store, range(self.align_before))
            if text is not None:
                cache.text = self.alignment.text_keys(_gather(x, text[0]), text[1])
                read, _ = self.alignment(x[:, -1:], cache.text)
                x = torch.cat([x[:, :-1], x[:, -1:] + read], dim=1)
            x = self._layers(x, rotation, mask, cache.store, range(self.align_before, depth))
        cache.advance(n)
        return self._rms(self._final_norm, x[:, -1])

    def prefill(self, text: Tensor, text_lengths: Tensor, prompt: Tensor, prompt_lengths: Tensor,
                room: int) -> tuple[Tensor, KVCache]:
        """Run the prefix up to BOS once, items left-padded so every BOS is last. Returns the hidden
        state at BOS (B, dim) and the cache, with room for ``room`` steps."""
        seg = self.assemble(text, text_lengths, prompt, prompt_lengths, left_pad=True)
        cache = self.new_cache(seg.pad_left, seg.embeddings.shape[1] + room)
        return self._fill(cache, seg.embeddings, (seg.text_index, seg.text_mask)), cache

    def prefill_prompt(self, prompt: Tensor) -> KVCache:
        """The cache of ``[prompt][SEP]`` for one voice (prompt u-latents (1, T, D)), reusable for
        any number of sentences through ``prefill_text``."""
        if prompt.shape[0] != 1:
            raise ValueError("prefill_prompt takes one voice at a time (batch of 1)")
        groups = prompt.shape[1] // self.r
        seg = self.segment_embedding.weight
        latents = self.embed_latents(self.group(prompt[:, : groups * self.r])) + seg[PROMPT]
        x = torch.cat([latents, self.sep.expand(1, 1, -1) + seg[TEXT]], dim=1)
        cache = self.new_cache(torch.zeros(1, dtype=torch.long, device=x.device), x.shape[1])
        self._fill(cache, x, None)  # no output position here, so the alignment block reads nothing
        return cache

    def prefill_text(self, text: Tensor, prefix: KVCache, room: int) -> tuple[Tensor, KVCache]:
        """Continue a voice's ``[prompt][SEP]`` cache with ``[text][BOS]`` (text (1, L)); returns as
        ``prefill``. The prefix cache is not modified, so it can be reused."""
        seg = self.segment_embedding.weight
        x = torch.cat([self.text_embedding(text) + seg[TEXT], self.bos.expand(1, 1, -1) + seg[TARGET]], dim=1)
        cache = self.new_cache(prefix.offsets, prefix.length + x.shape[1] + room)
        for new, old in zip(cache.keys + cache.values, prefix.keys + prefix.values, strict=True):
            new[:, :, : prefix.length] = old[:, :, : prefix.length]
        cache.advance(prefix.length)
        index = torch.arange(text.shape[1], device=text.device)[None]
        return self._fill(cache, x, (index, torch.ones_like(text, dtype=torch.bool))), cache

    def step_hidden(self, group: Tensor, positions: Tensor, mask: Tensor, text: TextKeys | None,
                    store: KVStore) -> Tensor:
        """One new position per row: ``group`` (B, r, D) at ``positions`` (B, 1), ``mask`` (B, 1, 1, S)
        the S slots it attends over (``store`` as in ``_layers``); returns its hidden state (B, dim).
        ``step`` with the cache's buffers; the exported ONNX step with its inputs (inference/onnx.py)."""
        x = self.embed_latents(group.reshape(group.shape[0], 1, -1)) + self.segment_embedding.weight[TARGET]
        rotation = self._rotation(positions)
        depth = len(self._blocks)
        if self.alignment is None:
            x = self._layers(x, rotation, mask, store, range(depth))
        else:
            x = self._layers(x, rotation, mask, store, range(self.align_before))
            x = x + self.alignment(x, text)[0]  # between the stacks: read the text
            x = self._layers(x, rotation, mask, store, range(self.align_before, depth))
        return self._rms(self._final_norm, x[:, -1])

    def step(self, group: Tensor, cache: KVCache) -> Tensor:
        """Feed one group of r target latents (B, r, D) into the next slot; returns the new hidden
        state (B, dim)."""
        p = cache.length
        hidden = self.step_hidden(group, cache.positions(1), cache.valid[:, None, None, : p + 1], cache.text,
                                  cache.store)
        cache.advance(1)
        return hidden


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, S, dim) at positions index (B, n) → (B, n, dim)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))

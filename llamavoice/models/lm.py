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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn
from x_transformers import Decoder
from x_transformers.x_transformers import LayerIntermediates

from llamavoice.config import LMConfig

TEXT, PROMPT, TARGET = 0, 1, 2


@dataclass
class LMOutput:
    mu: Tensor  # (B, N*r, D) prediction for each target frame, fp32
    logstd: Tensor  # (B, N*r, D), fp32, clamped
    stop_logits: Tensor  # (B, N + 1), fp32
    hidden: Tensor  # (B, N + 1, dim) decoder states at the output positions


@dataclass
class PromptPrefix:
    """The KV cache of a voice's ``[prompt][SEP]`` prefix."""

    cache: LayerIntermediates
    length: int


@dataclass
class Segments:
    """Where each part of each item sits in the assembled (padded) sequence."""

    embeddings: Tensor  # (B, S, dim)
    lengths: Tensor  # (B,) real positions per item
    output_index: Tensor  # (B, N + 1) positions of BOS and each target group
    pad_left: Tensor  # (B,) left padding (0 when right-padded)


class LatentLM(nn.Module):
    def __init__(self, cfg: LMConfig, latent_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = latent_dim
        self.r = cfg.reduction_factor
        dim = cfg.dim
        self.text_embedding = nn.Embedding(vocab_size, dim)
        self.latent_in = nn.Linear(latent_dim * self.r, dim)
        self.segment_embedding = nn.Embedding(3, dim)
        self.sep = nn.Parameter(torch.randn(dim) * 0.02)
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.decoder = Decoder(
            dim=dim,
            depth=cfg.depth,
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
        )
        self.gaussian_head = nn.Linear(dim, 2 * latent_dim * self.r)
        self.stop_head = nn.Linear(dim, 1)

    # --- sequence assembly ---------------------------------------------------------------------
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
            (self.latent_in(self.group(prompt)) + seg[PROMPT], prompt_groups),
            (self.sep.expand(B, 1, dim) + seg[TEXT], ones),
            (self.text_embedding(text) + seg[TEXT], text_lengths),
            (self.bos.expand(B, 1, dim) + seg[TARGET], ones),
        ]
        if target is not None:
            assert target_lengths is not None
            pad = (-target.shape[1]) % self.r
            target = nn.functional.pad(target, (0, 0, 0, pad))
            parts.append((self.latent_in(self.group(target)) + seg[TARGET], self.num_groups(target_lengths)))

        lengths = sum(n for _, n in parts)
        total = int(lengths.max())
        pad_left = (total - lengths) if left_pad else torch.zeros_like(lengths)
        # One spare slot at the end swallows the padded elements of every part.
        out = torch.zeros(B, total + 1, dim, device=device, dtype=parts[0][0].dtype)
        offset = pad_left.clone()
        bos_position = None
        for i, (x, n) in enumerate(parts):
            steps = torch.arange(x.shape[1], device=device)
            index = offset[:, None] + steps[None]
            index = torch.where(steps[None] < n[:, None], index, total)
            out.scatter_(1, index[..., None].expand(-1, -1, dim), x.to(out.dtype))
            if i == 3:
                bos_position = offset.clone()
            offset = offset + n
        out = out[:, :total]
        n_out = 1 + (int(self.num_groups(target_lengths).max()) if target is not None else 0)
        output_index = (bos_position[:, None] + torch.arange(n_out, device=device)[None]).clamp(max=total - 1)
        return Segments(out, lengths, output_index, pad_left)

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
    ) -> LMOutput:
        """Teacher-forced forward. ``target`` (B, T, D) are u-latents of the utterance to speak."""
        seg = self.assemble(text, text_lengths, prompt, prompt_lengths, target, target_lengths)
        mask = torch.arange(seg.embeddings.shape[1], device=text.device)[None] < seg.lengths[:, None]
        hidden = self.decoder(seg.embeddings, mask=mask)
        hidden = hidden.gather(1, seg.output_index[..., None].expand(-1, -1, hidden.shape[-1]))
        mu, logstd, stop = self.heads(hidden)
        # Output position k predicts group k; the last position only decides "stop".
        mu = rearrange(mu[:, :-1], "b n r d -> b (n r) d")[:, : target.shape[1]]
        logstd = rearrange(logstd[:, :-1], "b n r d -> b (n r) d")[:, : target.shape[1]]
        return LMOutput(mu=mu, logstd=logstd, stop_logits=stop, hidden=hidden)

    # --- incremental decoding (inference) ----------------------------------------------------------
    def prefill(
        self,
        text: Tensor,
        text_lengths: Tensor,
        prompt: Tensor,
        prompt_lengths: Tensor,
    ) -> tuple[Tensor, LayerIntermediates, Tensor]:
        """Run the prefix up to BOS once. Returns the hidden state at BOS (B, dim), the KV cache and
        the left padding per item (pass it to ``step``); items are left-padded so every BOS is last."""
        seg = self.assemble(text, text_lengths, prompt, prompt_lengths, left_pad=True)
        hidden, cache = self.decoder(seg.embeddings, seq_start_pos=seg.pad_left, return_hiddens=True)
        return hidden[:, -1], cache, seg.pad_left

    def prefill_prompt(self, prompt: Tensor) -> PromptPrefix:
        """KV cache of ``[prompt][SEP]`` for one voice (prompt u-latents (1, T, D)), reusable for
        any number of sentences through ``prefill_text``."""
        if prompt.shape[0] != 1:
            raise ValueError("prefill_prompt takes one voice at a time (batch of 1)")
        groups = prompt.shape[1] // self.r
        seg = self.segment_embedding.weight
        latents = self.latent_in(self.group(prompt[:, : groups * self.r])) + seg[PROMPT]
        x = torch.cat([latents, self.sep.expand(1, 1, -1) + seg[TEXT]], dim=1)
        _, cache = self.decoder(x, return_hiddens=True)
        return PromptPrefix(cache=cache, length=x.shape[1])

    def prefill_text(self, text: Tensor, prefix: PromptPrefix) -> tuple[Tensor, LayerIntermediates, Tensor]:
        """Continue a cached voice prefix with ``[text][BOS]`` (text (1, L)); same returns as ``prefill``.
        The prefix cache is not modified, so it can be reused."""
        seg = self.segment_embedding.weight
        x = torch.cat([self.text_embedding(text) + seg[TEXT], self.bos.expand(1, 1, -1) + seg[TARGET]], dim=1)
        hidden, cache = self.decoder(x, cache=prefix.cache, cache_age=x.shape[1], return_hiddens=True)
        return hidden[:, -1], cache, torch.zeros(1, dtype=torch.long, device=text.device)

    def step(self, group: Tensor, cache: LayerIntermediates, pad_left: Tensor) -> tuple[Tensor, LayerIntermediates]:
        """Feed one group of r target latents (B, r, D); returns the new hidden state (B, dim)."""
        x = self.latent_in(rearrange(group, "b r d -> b 1 (r d)")) + self.segment_embedding.weight[TARGET]
        hidden, cache = self.decoder(
            x, cache=cache, seq_start_pos=pad_left, return_hiddens=True, input_not_include_cache=True
        )
        return hidden[:, -1], cache

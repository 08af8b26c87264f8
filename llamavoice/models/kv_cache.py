"""The LM's cache for incremental decoding: preallocated key/value buffers and the text keys.

The LM (``models/lm.py``) fills it with a prefill and writes one slot per step, gpt-fast style:
keys are stored already rotated, so a step rotates only its own position and attends over the
filled part of the buffers. A cache is an ordinary object passed to the LM's methods, not module
state: nothing of it is in the state dict, and several generations can be in flight at once (a
lazily consumed stream, the server's batch).

Layout. Rows are right-aligned in the slot axis: row b's real positions occupy slots
``[offsets[b], length)`` and its token at slot s is rotated at position ``s - offsets[b]``; the
slots before ``offsets[b]`` are left padding. :func:`gather` builds a cache from rows of others
(each row's prefill, a batch whose rows join and leave) by shifting slot and offset by the same
amount, which keeps every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TextKeys:
    """The alignment block's keys and values of the text, fixed once the text is prefilled."""

    keys: Tensor  # (B, heads, L, dim_head)
    values: Tensor  # (B, heads, L, dim_head)
    mask: Tensor  # (B, L) real text positions
    # (B,) long: the output step the next query is (0 = BOS); advanced by every incremental read.
    next_query: Tensor | None = None
    # (B,) long: the text position each row reads now (incremental decoding with a window).
    position: Tensor | None = None

    def reached_end(self) -> Tensor:
        """(B,) bool: the row reads its last real text position. Meaningful only while the
        monotonic window moves ``position`` (it stays 0 otherwise)."""
        assert self.position is not None
        index = torch.arange(self.mask.shape[-1], device=self.mask.device)
        last = torch.where(self.mask, index, -1).amax(dim=-1)
        return self.position >= last

    def select(self, index: Tensor) -> TextKeys:
        return TextKeys(self.keys[index], self.values[index], self.mask[index], self.next_query[index],
                        self.position[index])


@dataclass
class KVCache:
    """Per layer (both decoder stacks, in order) rotated keys and values, (B, kv_heads, capacity,
    dim_head), and with an alignment block the text keys. See the module docstring for the layout."""

    keys: list[Tensor]
    values: list[Tensor]
    valid: Tensor  # (B, capacity) bool: real (not left-padding) slots
    offsets: Tensor  # (B,) long: slot - offset = the position a row's token is rotated at
    length: int  # slots filled so far
    text: TextKeys | None = None

    @classmethod
    def allocate(cls, layers: int, offsets: Tensor, capacity: int, kv_heads: int, dim_head: int,
                 like: Tensor) -> KVCache:
        """Zeroed buffers for ``len(offsets)`` rows (dtype and device of ``like``), nothing filled."""
        shape = (offsets.shape[0], kv_heads, capacity, dim_head)
        keys = [like.new_zeros(shape) for _ in range(layers)]
        values = [like.new_zeros(shape) for _ in range(layers)]
        valid = torch.arange(capacity, device=offsets.device)[None] >= offsets[:, None]
        return cls(keys, values, valid, offsets, 0)

    def positions(self, n: int) -> Tensor:
        """(B, n): the position of each row's token in the next ``n`` slots."""
        return self.length + torch.arange(n, device=self.offsets.device)[None] - self.offsets[:, None]

    def store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write a layer's new rotated keys and values (B, kv_heads, n, dim_head) into the next ``n``
        slots; returns the layer's filled keys and values (new ones included). ``length`` advances
        once every layer is written (:meth:`advance`)."""
        p, n = self.length, k.shape[-2]
        self.keys[layer][:, :, p : p + n] = k
        self.values[layer][:, :, p : p + n] = v
        return self.keys[layer][:, :, : p + n], self.values[layer][:, :, : p + n]

    def advance(self, n: int) -> None:
        self.length += n


def stack_text_keys(parts: list[TextKeys]) -> TextKeys:
    """Text keys of several row groups (each (B_i, heads, L_i, d)) → one batch right-padded to the
    longest text, with its mask."""
    L = max(t.keys.shape[-2] for t in parts)
    pad = lambda t: F.pad(t, (0, 0, 0, L - t.shape[-2]))  # noqa: E731
    return TextKeys(torch.cat([pad(t.keys) for t in parts]), torch.cat([pad(t.values) for t in parts]),
                    torch.cat([F.pad(t.mask, (0, L - t.mask.shape[-1])) for t in parts]),
                    torch.cat([t.next_query for t in parts]), torch.cat([t.position for t in parts]))


def gather(parts: list[tuple[KVCache, Tensor]], room: int) -> KVCache:
    """A new cache holding, in order, rows ``index`` of each ``(cache, index)`` part, right-aligned
    to the longest kept row, with capacity for ``room`` more slots. A part may appear several times
    (rows that share a prefill)."""
    parts = [(c, idx) for c, idx in parts if idx.numel() > 0]
    if not parts:
        raise ValueError("gather needs at least one row")
    real = max(int((c.length - c.offsets[idx]).max()) for c, idx in parts)
    capacity = real + max(1, room)
    rows = sum(int(idx.numel()) for _, idx in parts)
    first = parts[0][0]
    keys = [k.new_zeros(rows, k.shape[1], capacity, k.shape[3]) for k in first.keys]
    values = [v.new_zeros(rows, v.shape[1], capacity, v.shape[3]) for v in first.values]
    offsets = []
    b = 0
    for c, idx in parts:
        n = int(idx.numel())
        span = min(real, c.length)  # slots of this part that a kept row may use
        for new_k, new_v, k, v in zip(keys, values, c.keys, c.values, strict=True):
            new_k[b : b + n, :, real - span : real] = k[idx, :, c.length - span : c.length]
            new_v[b : b + n, :, real - span : real] = v[idx, :, c.length - span : c.length]
        offsets.append(c.offsets[idx] + (real - c.length))  # slot and offset shift together
        b += n
    offsets_t = torch.cat(offsets)
    valid = torch.arange(capacity, device=offsets_t.device)[None] >= offsets_t[:, None]
    # The alignment block's text keys: fixed per row, padded to the longest text.
    text = stack_text_keys([c.text.select(idx) for c, idx in parts]) if first.text is not None else None
    return KVCache(keys, values, valid, offsets_t, real, text)

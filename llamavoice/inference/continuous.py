"""Continuous batching: one decode loop whose rows join and leave between steps.

``LatentGenerator.steps`` starts a fixed batch together and runs it until its last item stops. A
server receives sentences at any moment, so :class:`ContinuousBatcher` keeps one batch of rows in
one LM cache and, between two steps, retires the rows that stopped (or were
cancelled) and admits new ones (vLLM-style), so N concurrent streams share every LM step.

Each item computes exactly what it computes alone in ``LatentGenerator.steps``: the same voice
prefix and ``[text][BOS]`` prefill (``LatentGenerator.prefill``), its own noise drawn from its
seed, its own step counter, length limits and sampling parameters (items with different
temperatures or guidance are sampled in separate groups), and keys rotated at its own positions.
Only the floating-point summation order of the batched matrix products differs, so outputs agree
with the one-item loop to float rounding.

Cache layout: see ``models/kv_cache.py``. Between steps the batch's cache is rebuilt with
:func:`~llamavoice.models.kv_cache.gather` from the kept rows and the new rows' prefills, which
keeps every position, drops the slots no kept row uses any more and reserves room for the steps
the rows may still take. Rows are ordered: conditional rows of every item (in item order), then
the unconditional rows of the guided items (same order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from llamavoice.errors import ConfigError
from llamavoice.inference.generator import GenerationItem, LatentGenerator
from llamavoice.inference.sampling import SamplingConfig, StepParams, StepState, initial_state, sample_step
from llamavoice.models.kv_cache import KVCache, gather


@dataclass
class _Entry:
    """One item in (or waiting for) the batch."""

    ticket: Hashable
    item: GenerationItem
    params: StepParams
    group_key: tuple  # items with equal keys are sampled together
    noise: Tensor  # (max groups + 1, r, D) on the device
    alt: Tensor
    min_groups: int
    max_groups: int
    end_hold: int | None  # groups it may still add once its reading reached the end of its text
    steps: int = 0  # groups sampled so far
    cancelled: bool = False


@dataclass
class RowOutput:
    ticket: Hashable
    group: Tensor | None  # (r, D) fp32 on the CPU, or None when the item stopped before this group
    finished: bool


def _cat_states(states: list[StepState]) -> StepState:
    return StepState(*(torch.cat([getattr(s, f.name) for s in states]) for f in dataclasses.fields(StepState)))


def _select_state(state: StepState, index: Tensor) -> StepState:
    return StepState(*(getattr(state, f.name)[index] for f in dataclasses.fields(StepState)))


class ContinuousBatcher:
    """The rows of one decode loop. Not thread-safe: one thread calls :meth:`add`, :meth:`cancel`
    and :meth:`step` (the server's engine thread)."""

    def __init__(self, generator: LatentGenerator):
        self.gen = generator
        self.device = generator.device
        self.min_logstd = generator.lm.cfg.min_logstd
        self.entries: list[_Entry] = []  # in the batch, in row order
        self.pending: list[_Entry] = []  # added, admitted at the next step
        self.cache: KVCache | None = None
        self.hidden: Tensor | None = None  # (rows, dim): the next heads input of every row
        self.state: StepState | None = None  # per entry
        self._dirty = False  # entries stopped or were cancelled since the last repack

    # --- bookkeeping -----------------------------------------------------------------------------
    def add(self, ticket: Hashable, item: GenerationItem, sampling: SamplingConfig) -> None:
        """Queue an item; it joins the batch at the next :meth:`step`."""
        if len(item.text) == 0:
            raise ConfigError("every item needs at least one text token")
        if item.prefix_store is None:
            raise ConfigError("continuous batching needs the item's voice prefix_store")
        params = StepParams.from_config(sampling, self.min_logstd)
        lo, hi = self.gen.group_limits(item)
        noise, alt = self.gen.item_noise(item)
        self.pending.append(_Entry(ticket, item, params, tuple(dataclasses.astuple(params)),
                                   noise.to(self.device), alt.to(self.device), lo, hi,
                                   self.gen.end_hold_groups(sampling)))

    def cancel(self, ticket: Hashable) -> None:
        """Drop an item (waiting or in the batch); it produces no more output."""
        self.pending = [e for e in self.pending if e.ticket != ticket]
        for e in self.entries:
            if e.ticket == ticket:
                e.cancelled = True
                self._dirty = True

    @property
    def rows(self) -> int:
        """LM rows in the batch (guided items take two)."""
        return sum(2 if e.params.guided else 1 for e in self.entries if not e.cancelled)

    def __len__(self) -> int:
        return sum(not e.cancelled for e in self.entries) + len(self.pending)

    # --- the loop --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[RowOutput]:
        """Admit the waiting items, retire the stopped ones, then one sampling step and one LM step
        for every row. Returns one output per item in the batch."""
        if self.pending or self._dirty:
            self._rebuild()
        if not self.entries:
            return []
        assert self.hidden is not None and self.state is not None and self.cache is not None
        E = len(self.entries)
        mu, logstd, stop = self.gen.lm.heads(self.hidden[:, None])
        mu, logstd, stop = mu[:, 0], logstd[:, 0], stop[:, 0]
        groups = torch.empty(E, self.gen.r, self.gen.dim, device=self.device)
        guided_rank = self._guided_rank()
        new_parts: list[tuple[Tensor, StepState]] = []
        for members in self._sampling_groups().values():
            idx = torch.tensor(members, device=self.device)
            params = self.entries[members[0]].params
            rows = idx
            if params.guided:
                rows = torch.cat([idx, E + torch.tensor([guided_rank[m] for m in members], device=self.device)])
            entries = [self.entries[m] for m in members]
            noise = torch.stack([e.noise[e.steps] for e in entries])
            alt = torch.stack([e.alt[e.steps] for e in entries])
            counter = torch.tensor([e.steps for e in entries], device=self.device)
            min_g = torch.tensor([e.min_groups for e in entries], device=self.device)
            max_g = torch.tensor([e.max_groups for e in entries], device=self.device)
            state = self.state if len(members) == E else _select_state(self.state, idx)
            group, state = sample_step(mu[rows], logstd[rows], stop[rows], noise, alt, counter, min_g, max_g,
                                       state, params)
            groups[idx] = group
            new_parts.append((idx, state))
        if len(new_parts) == 1 and new_parts[0][0].numel() == E:
            self.state = new_parts[0][1]
        else:
            for idx, state in new_parts:
                for f in dataclasses.fields(StepState):
                    getattr(self.state, f.name)[idx] = getattr(state, f.name)
        alive = self.state.alive.tolist()  # the one host sync per step
        groups_cpu = groups.float().cpu()
        outputs = []
        for i, e in enumerate(self.entries):
            e.steps += 1
            if e.cancelled:
                continue
            outputs.append(RowOutput(e.ticket, groups_cpu[i] if alive[i] else None, not alive[i]))
            if not alive[i]:
                self._dirty = True
        if any(alive):
            guided = [i for i, e in enumerate(self.entries) if e.params.guided]
            fed = torch.cat([groups, groups[guided]]) if guided else groups
            self.hidden = self.gen.step(fed.to(self.gen.lm_dtype), self.cache)
            if any(e.end_hold is not None for e in self.entries):
                assert self.cache.text is not None
                for e, ended in zip(self.entries, self.cache.text.reached_end().tolist(), strict=False):
                    if ended and e.end_hold is not None:
                        e.max_groups = min(e.max_groups, e.steps + e.end_hold)
        return outputs

    def _guided_rank(self) -> dict[int, int]:
        """Entry index → index of its unconditional row among the unconditional rows."""
        ranks, n = {}, 0
        for i, e in enumerate(self.entries):
            if e.params.guided:
                ranks[i] = n
                n += 1
        return ranks

    def _sampling_groups(self) -> dict[tuple, list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i, e in enumerate(self.entries):
            groups.setdefault(e.group_key, []).append(i)
        return groups

    def _rebuild(self) -> None:
        """One repack: keep the live entries, append the waiting ones (prefilled now)."""
        E = len(self.entries)
        alive = self.state.alive.tolist() if self.state is not None else []
        keep = [i for i, e in enumerate(self.entries) if not e.cancelled and alive[i]]
        kept = [self.entries[i] for i in keep]
        rank = self._guided_rank()
        new = self.pending
        self.pending = []
        plain = [e for e in new if not e.params.guided]
        guided = [e for e in new if e.params.guided]
        cond_parts: list[tuple[KVCache, Tensor]] = []
        uncond_parts: list[tuple[KVCache, Tensor]] = []
        cond_hidden: list[Tensor] = []
        uncond_hidden: list[Tensor] = []
        room = max([e.max_groups + 1 - e.steps for e in kept + new], default=1)
        dev = self.device
        if kept:
            assert self.cache is not None and self.hidden is not None
            cond = torch.tensor(keep, device=dev)
            uncond = torch.tensor([E + rank[i] for i in keep if i in rank], device=dev, dtype=torch.long)
            cond_parts.append((self.cache, cond))
            uncond_parts.append((self.cache, uncond))
            cond_hidden.append(self.hidden[cond])
            uncond_hidden.append(self.hidden[uncond])
        for batch, is_guided in ((plain, False), (guided, True)):
            if not batch:
                continue
            items = [e.item for e in batch]
            hidden, cache = self.gen.prefill(items, is_guided, max(e.max_groups + 1 for e in batch))
            n = len(batch)
            cond_parts.append((cache, torch.arange(n, device=dev)))
            cond_hidden.append(hidden[:n])
            if is_guided:
                uncond_parts.append((cache, torch.arange(n, 2 * n, device=dev)))
                uncond_hidden.append(hidden[n:])
        self.entries = kept + plain + guided
        self._dirty = False
        if not self.entries:
            self.cache = self.hidden = self.state = None
            return
        self.cache = gather(cond_parts + uncond_parts, room)
        self.hidden = torch.cat(cond_hidden + uncond_hidden)
        states = []
        if kept:
            assert self.state is not None
            states.append(_select_state(self.state, torch.tensor(keep, device=dev)))
        if plain or guided:
            states.append(initial_state(len(plain) + len(guided), self.gen.dim, dev))
        self.state = _cat_states(states)

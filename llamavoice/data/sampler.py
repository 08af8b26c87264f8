"""Duration-bucketed batching with a fixed audio budget, resumable mid-epoch and DDP-aware.

Every batch satisfies ``len(batch) * max(duration in batch) <= frame_budget_seconds``: the padded
batch holds at most that many seconds of target audio, so memory per step is roughly constant
whether the batch is 40 short clips or 3 long ones.

Per epoch (all randomness from ``(seed, epoch)``, identical on every rank):

1. shuffle the indices and cut them into large chunks (``chunk_batches`` batches' worth each);
2. sort each chunk by duration and fill batches greedily up to the budget (little padding, while
   chunking keeps the epoch random);
3. shuffle the batch order;
4. make the batch count divisible by ``num_replicas``: with ``drop_last=False`` by splitting the
   largest batches in two (halves stay within budget; nothing is lost or repeated), with
   ``drop_last=True`` by dropping the surplus batches; rank ``r`` then takes batches
   ``r, r + R, r + 2R, ...``, so every rank runs the same number of steps.

With ``shuffle=False`` the indices are sorted globally and the batch order is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from llamavoice.data.manifest import DatasetError

log = logging.getLogger(__name__)


class DurationBatchSampler:
    """Yields lists of dataset indices (use as a DataLoader ``batch_sampler``).

    Items longer than the budget can never fit in a batch; they are left out with a warning
    (``num_too_long`` counts them). Call :meth:`set_epoch` before each epoch. ``len()`` is the number
    of batches the next iteration yields on this rank (the remaining ones after a mid-epoch resume).
    """

    def __init__(
        self,
        durations: Sequence[float],
        frame_budget_seconds: float,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        chunk_batches: int = 100,
        max_batch_size: int | None = None,
    ):
        if not frame_budget_seconds > 0:
            raise DatasetError(f"frame_budget_seconds must be positive, got {frame_budget_seconds!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise DatasetError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of {num_replicas}"
            )
        if max_batch_size is not None and max_batch_size < 1:
            raise DatasetError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if seed < 0:
            raise DatasetError(f"seed must be >= 0, got {seed}")
        self.durations = np.asarray(durations, dtype=np.float64)
        if self.durations.ndim != 1 or not np.isfinite(self.durations).all() or (self.durations < 0).any():
            raise DatasetError("durations must be a flat list of finite, non-negative seconds")
        self.budget = float(frame_budget_seconds)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.chunk_batches = max(1, int(chunk_batches))
        self.max_batch_size = max_batch_size

        fits = self.durations <= self.budget
        self.indices = np.flatnonzero(fits)
        self.num_too_long = int((~fits).sum())
        if self.num_too_long:
            log.warning(
                "%d of %d utterances are longer than the batch budget of %.1f s and are left out "
                "(longest %.1f s); raise frame_budget_seconds or prepare the data with a lower --max-seconds",
                self.num_too_long, len(self.durations), self.budget, float(self.durations.max()),
            )
        if len(self.indices) == 0:
            raise DatasetError(
                f"no utterance fits in the batch budget of {self.budget:g} s (or the dataset is empty)"
            )
        self.epoch = 0
        self._skip = 0  # batches of the current epoch to skip on the next __iter__ (resume)
        self._yielded = 0  # batches of the current epoch yielded so far on this rank
        self._cache: tuple[int, list[list[int]]] | None = None

    # --- batch construction ---------------------------------------------------------------------
    def _fill(self, order: np.ndarray) -> list[list[int]]:
        """Greedy batches over indices sorted by ascending duration."""
        batches: list[list[int]] = []
        current: list[int] = []
        for idx in order:
            longest = self.durations[idx]  # ascending order: the new item is the longest
            full = self.max_batch_size is not None and len(current) >= self.max_batch_size
            if current and (full or (len(current) + 1) * longest > self.budget):
                batches.append(current)
                current = []
            current.append(int(idx))
        if current:
            batches.append(current)
        return batches

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """All batches of an epoch, before the split across ranks (the same on every rank)."""
        durations = self.durations[self.indices]
        if not self.shuffle:
            order = self.indices[np.argsort(durations, kind="stable")]
            return self._fill(order)
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.indices))
        # Chunk size: about chunk_batches typical batches, judged by the median duration.
        typical = max(1, int(self.budget // max(float(np.median(durations)), 1e-3)))
        if self.max_batch_size is not None:
            typical = min(typical, self.max_batch_size)
        chunk = max(1, typical * self.chunk_batches)
        batches: list[list[int]] = []
        for start in range(0, len(perm), chunk):
            part = perm[start : start + chunk]
            part = part[np.argsort(durations[part], kind="stable")]
            batches.extend(self._fill(self.indices[part]))
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _divisible(self, batches: list[list[int]]) -> list[list[int]]:
        r = self.num_replicas
        if len(batches) % r == 0:
            return batches
        if self.drop_last and len(batches) >= r:
            return batches[: len(batches) - len(batches) % r]
        batches = list(batches)
        while len(batches) % r:
            # Split the batch with the most items; ties go to the earliest (deterministic).
            sizes = [len(b) for b in batches]
            i = int(np.argmax(sizes))
            if sizes[i] < 2:
                break
            b = batches[i]
            batches[i : i + 1] = [b[: len(b) // 2], b[len(b) // 2 :]]
        # Fewer items than ranks: repeat batches so every rank still gets the same step count.
        k = 0
        while len(batches) % r:
            batches.append(batches[k])
            k += 1
        return batches

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's full batch list for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self._divisible(self._global_batches(epoch))[self.rank :: self.num_replicas]
        self._cache = (epoch, batches)
        return batches

    # --- iteration ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (from its start)."""
        if epoch < 0:
            raise DatasetError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        skip, self._skip = self._skip, 0
        self._yielded = skip
        for batch in batches[skip:]:
            self._yielded += 1
            yield list(batch)

    def __len__(self) -> int:
        return max(0, len(self.epoch_batches()) - self._skip)

    # --- resume ---------------------------------------------------------------------------------
    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """Position in the current epoch, for checkpoints.

        A DataLoader with workers pulls batches from the sampler ahead of the training loop, so the
        sampler's own count can run ahead of what was trained on; pass the number of batches the
        loop actually consumed this epoch as ``batches_consumed`` to be exact.
        """
        done = self._yielded if batches_consumed is None else int(batches_consumed)
        return {
            "epoch": self.epoch,
            "batches_yielded": done,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "num_items": len(self.durations),
            "frame_budget_seconds": self.budget,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue mid-epoch: the next iteration yields exactly the batches not yet yielded."""
        try:
            epoch, done = int(state["epoch"]), int(state["batches_yielded"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"sampler state is malformed ({exc!r}); expected keys 'epoch' and 'batches_yielded'"
            ) from exc
        mismatches = [
            f"{key} {state[key]} -> {now}"
            for key, now in (("seed", self.seed), ("num_items", len(self.durations)),
                             ("frame_budget_seconds", self.budget))
            if key in state and state[key] != now
        ]
        if mismatches and done > 0:
            raise DatasetError(
                "cannot resume mid-epoch: the sampler state was saved with different settings ("
                + ", ".join(mismatches) + "); restore the original data/budget/seed, or start the next epoch"
            )
        old_replicas = int(state.get("num_replicas", self.num_replicas))
        if old_replicas != self.num_replicas and done > 0:
            # Different world size: the per-rank lists differ, so only the epoch fraction carries over.
            converted = -(-done * old_replicas // self.num_replicas)
            log.warning(
                "resuming on %d replicas from a state saved on %d: skipping %d batches per rank "
                "(the same share of the epoch; a few utterances may be repeated or missed)",
                self.num_replicas, old_replicas, converted,
            )
            done = converted
        self.epoch = epoch
        self._skip = max(0, done)
        self._yielded = self._skip

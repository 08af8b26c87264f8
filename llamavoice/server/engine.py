"""Who runs the LM for the server's requests.

:class:`BatchingEngine` owns one thread running a :class:`ContinuousBatcher`: every request's
sentences become rows of the same decode loop, admitted and retired between steps, so N streams
share each LM step. A request thread (running ``TTS.stream`` with :meth:`BatchingEngine.frames` as
its frame source, then the flow, the VAE decoder and the audio encoder) blocks on a queue that the
loop fills with the frames of its row.

:class:`SerialEngine` is what the other OpenAI-compatible TTS servers do: one request at a time
(``TTS.stream`` under a lock). ``--no-batching`` selects it (the benchmark's peer).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterator

import torch

from llamavoice.errors import LlamaVoiceError
from llamavoice.inference.api import TTS, FrameSource
from llamavoice.inference.continuous import ContinuousBatcher
from llamavoice.inference.generator import GenerationItem
from llamavoice.inference.sampling import SamplingConfig


class Cancelled(Exception):
    """The request was cancelled (its client went away): stop producing audio for it."""


class RequestHandle:
    """One speech request's hold on an engine; :meth:`cancel` stops its generation."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._on_cancel: list = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled.set()
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback) -> None:  # noqa: ANN001
        """Run ``callback`` on cancel (now, if it is already cancelled)."""
        with self._lock:
            if not self.cancelled.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()


_DONE = object()


class BatchingEngine:
    """One decode loop for every request (see module docstring)."""

    batching = True

    def __init__(self, tts: TTS, max_rows: int = 16, threads: int | None = None):
        self.tts = tts
        self.max_rows = max(1, int(max_rows))
        self.batcher = ContinuousBatcher(tts.generator)
        self._cond = threading.Condition()
        self._inbox: deque[tuple[int, GenerationItem, SamplingConfig]] = deque()
        self._cancels: set[int] = set()
        self._queues: dict[int, queue.SimpleQueue] = {}
        self._rows: dict[int, int] = {}  # ticket -> LM rows it takes (2 under guidance)
        self._tickets = itertools.count()
        self._stop = False
        self._threads = threads or torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="llamavoice-decode-loop", daemon=True)
        self.steps = 0  # decode steps run (for /health, tests and the benchmark)
        self.shared_steps = 0  # steps that advanced more than one request's sentence at once
        self.peak_rows = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield  # requests run concurrently

    def frame_source(self, request: RequestHandle) -> FrameSource:
        return lambda item, cfg: self.frames(item, cfg, request)

    def stats(self) -> dict:
        with self._cond:
            return {"rows": sum(self._rows.values()), "waiting_sentences": len(self._inbox),
                    "sentences": len(self._queues), "steps": self.steps, "shared_steps": self.shared_steps,
                    "peak_rows": self.peak_rows}

    # --- request side ------------------------------------------------------------------------------
    def frames(self, item: GenerationItem, cfg: SamplingConfig, request: RequestHandle) -> Iterator[torch.Tensor]:
        """The kept groups (r, D) of ``item``, produced by the decode loop."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._cond:
            if self._stop:
                raise LlamaVoiceError("the server is shutting down; try again")
            ticket = next(self._tickets)
            self._queues[ticket] = q
            self._inbox.append((ticket, item, cfg))
            self._cond.notify()
        request.on_cancel(lambda: self._cancel(ticket))
        try:
            while True:
                got = q.get()
                if got is _DONE:
                    return
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            self._cancel(ticket)  # a consumer that stops early frees the row

    def _cancel(self, ticket: int) -> None:
        with self._cond:
            q = self._queues.pop(ticket, None)
            if q is None:
                return  # finished already
            self._cancels.add(ticket)
            self._cond.notify()
        q.put(Cancelled())

    # --- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        # torch's thread count is per thread for some backends: use the server's.
        torch.set_num_threads(self._threads)
        while True:
            with self._cond:
                while not (self._stop or self._inbox or self._cancels or len(self.batcher)):
                    self._cond.wait()
                if self._stop:
                    break
                if self._cancels:
                    for ticket in self._cancels:
                        self.batcher.cancel(ticket)
                        self._rows.pop(ticket, None)
                    self._inbox = deque(entry for entry in self._inbox if entry[0] not in self._cancels)
                    self._cancels.clear()
                used = sum(self._rows.values())
                while self._inbox:
                    ticket, item, cfg = self._inbox[0]
                    need = 2 if cfg.cfg_weight != 0.0 else 1
                    if used and used + need > self.max_rows:
                        break  # waits for a row to retire
                    self._inbox.popleft()
                    try:
                        self.batcher.add(ticket, item, cfg)
                    except LlamaVoiceError as exc:
                        self._deliver(ticket, exc, finished=True)
                        continue
                    self._rows[ticket] = need
                    used += need
            try:
                outputs = self.batcher.step()
            except Exception as exc:  # noqa: BLE001 (every request in the batch gets the error)
                self._fail_all(exc)
                continue
            self.steps += 1
            self.shared_steps += len(outputs) > 1
            self.peak_rows = max(self.peak_rows, self.batcher.rows)
            for out in outputs:
                if out.group is not None:
                    self._deliver(out.ticket, out.group, finished=False)
                if out.finished:
                    self._deliver(out.ticket, _DONE, finished=True)
        self._fail_all(LlamaVoiceError("the server is shutting down"))

    def _deliver(self, ticket: int, value: object, finished: bool) -> None:
        with self._cond:
            q = self._queues.get(ticket)
            if finished:
                self._queues.pop(ticket, None)
                self._rows.pop(ticket, None)
        if q is not None:
            q.put(value)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            queues = list(self._queues.values())
            self._queues.clear()
            self._rows.clear()
            self._inbox.clear()
            self._cancels.clear()
        self.batcher = ContinuousBatcher(self.tts.generator)  # start clean
        for q in queues:
            q.put(exc)


class SerialEngine:
    """One request at a time, each through ``TTS.stream`` (see module docstring)."""

    batching = False

    def __init__(self, tts: TTS):
        self.tts = tts
        self._lock = threading.Lock()
        self._busy = 0

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
            try:
                yield
            finally:
                self._busy -= 1

    def frame_source(self, request: RequestHandle) -> FrameSource | None:
        return None  # the TTS's own generator; the request thread checks for cancellation per chunk

    def stats(self) -> dict:
        return {"rows": self._busy, "waiting_sentences": 0, "sentences": self._busy, "steps": None,
                "shared_steps": 0, "peak_rows": 1}


def make_engine(
    tts: TTS, batching: bool = True, max_rows: int = 16, threads: int | None = None
) -> BatchingEngine | SerialEngine:
    if batching:
        return BatchingEngine(tts, max_rows, threads)
    return SerialEngine(tts)

"""Incremental audio: chunked VAE decoding, latent time-stretching and cross-faded joins.

The VAE decoder is convolutional and non-causal (a kernel-3 upsampling conv at the latent rate,
then a Vocos backbone of kernel-7 convolutions and an ISTFT with overlap-add at the mel rate), so
the audio of latent frame t depends on a few frames on each side of t. :func:`decoder_context`
counts them from the modules themselves; :class:`StreamingDecoder` decodes each chunk inside a
window with that much look-back and look-ahead, so the concatenated chunks equal a single decode
of the whole sequence (to float rounding).

:class:`LatentStretcher` (speed control) and :class:`CrossfadeJoiner` (sentence joins) are
written incrementally and are also what the non-streaming path uses, so streamed and
non-streamed output are the same computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from llamavoice.errors import ConfigError
from llamavoice.models.vae import VAE


def decoder_context(vae: VAE) -> int:
    """Latent frames of context (each side) that decide the audio of one latent frame."""
    decoder = vae.decoder
    unfold = decoder.unfold  # mel frames per latent frame
    # Convolutions of the backbone run at the mel rate: each reaches (k - 1) / 2 * dilation frames.
    mel = 0
    for module in decoder.backbone.modules():
        if isinstance(module, nn.Conv1d):
            mel += (module.kernel_size[0] - 1) // 2 * module.dilation[0]
    # Overlap-add: a sample is covered by every ISTFT frame whose window spans it.
    istft = decoder.head.istft
    mel += math.ceil(istft.win_length / istft.hop_length)
    up = decoder.upsample
    latent_reach = (up.kernel_size[0] - 1) // 2 * up.dilation[0]
    return math.ceil(mel / unfold) + latent_reach


def check_chunk_frames(name: str, value: Any) -> int:
    """Streaming chunk sizes: whole latent frames, 1 to 10,000 (400 s at 25 Hz)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 10_000:
        raise ConfigError(f"{name} must be an integer between 1 and 10000 (latent frames), got {value!r}")
    return int(value)


class StreamingDecoder:
    """Feed VAE latents as they are generated; get audio chunks that join into exactly the audio
    a one-shot decode would give.

    The first chunk has ``chunk_frames`` frames (it sets the time to first audio); each later one
    doubles up to ``max_chunk_frames``. Every chunk is decoded with ``context`` frames on both
    sides, so small chunks cost (chunk + 2·context) / chunk times the work of a one-shot decode:
    growing them keeps the first audio early and the total work low.
    """

    def __init__(
        self,
        decode: Callable[[Tensor], Tensor],
        samples_per_frame: int,
        context: int,
        chunk_frames: int = 4,
        max_chunk_frames: int | None = None,
    ):
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        self.decode = decode  # (T, D) -> (T * samples_per_frame,)
        self.spf = samples_per_frame
        self.context = context
        self.chunk = chunk_frames
        self.max_chunk = max(chunk_frames, max_chunk_frames or chunk_frames)
        self.frames: Tensor | None = None  # kept frames, starting at global index self.offset
        self.offset = 0
        self.total = 0
        self.emitted = 0  # frames whose audio has been returned

    def push(self, z: Tensor) -> list[np.ndarray]:
        """Add frames (n, D); returns the chunks that are now final."""
        if z.shape[0]:
            self.frames = z if self.frames is None else torch.cat([self.frames, z])
            self.total += z.shape[0]
        out = []
        while self.total - self.emitted >= self.chunk + self.context:
            out.append(self._decode(self.emitted + self.chunk, final=False))
            self.chunk = min(self.max_chunk, 2 * self.chunk)
        return out

    def finish(self) -> list[np.ndarray]:
        """Decode whatever is left (the end of the sequence needs no look-ahead)."""
        out = []
        while self.emitted < self.total:
            out.append(self._decode(min(self.total, self.emitted + self.chunk), final=True))
        return out

    def _decode(self, end: int, final: bool) -> np.ndarray:
        assert self.frames is not None
        start = max(0, self.emitted - self.context)
        stop = self.total if final else min(self.total, end + self.context)
        window = self.frames[start - self.offset : stop - self.offset]
        audio = self.decode(window)
        piece = audio[(self.emitted - start) * self.spf : (end - start) * self.spf]
        self.emitted = end
        # Forget frames no later window can reach.
        keep_from = max(0, self.emitted - self.context)
        if keep_from > self.offset:
            self.frames = self.frames[keep_from - self.offset :]
            self.offset = keep_from
        return piece.detach().float().cpu().numpy()


class LatentStretcher:
    """Resample a latent sequence in time by 1/speed with linear interpolation between frames.

    Output frame j sits at source position j·speed, so it only needs the two source frames
    around that position: the stretch can run as frames arrive. The decoder turns each latent
    frame into a fixed number of samples, so stretching the latents changes the duration without
    changing the pitch.
    """

    def __init__(self, speed: float):
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self.frames: Tensor | None = None
        self.produced = 0

    def _position(self, j: int) -> tuple[int, float]:
        p = j * self.speed
        i = math.floor(p)
        return i, p - i

    def _take(self, count: int) -> Tensor:
        assert self.frames is not None
        last = self.frames.shape[0] - 1
        idx0, idx1, frac = [], [], []
        for j in range(self.produced, self.produced + count):
            i, f = self._position(j)
            idx0.append(min(i, last))
            idx1.append(min(i + 1, last))
            frac.append(f)
        self.produced += count
        w = torch.tensor(frac, dtype=self.frames.dtype, device=self.frames.device)[:, None]
        return self.frames[idx0] * (1 - w) + self.frames[idx1] * w

    def push(self, z: Tensor) -> Tensor:
        if self.speed == 1.0:
            return z
        if z.shape[0]:
            self.frames = z if self.frames is None else torch.cat([self.frames, z])
        if self.frames is None:
            return z
        n = self.frames.shape[0]
        count = 0
        while True:
            i, f = self._position(self.produced + count)
            if i + 1 >= n:  # the right neighbour has not arrived yet
                break
            count += 1
        return self._take(count) if count else self.frames[:0]

    def finish(self) -> Tensor:
        if self.speed == 1.0 or self.frames is None:
            return torch.zeros(0) if self.frames is None else self.frames[:0]
        n_out = math.ceil(self.frames.shape[0] / self.speed - 1e-9)
        return self._take(max(0, n_out - self.produced))


def stretch_latents(z: Tensor, speed: float) -> Tensor:
    """Whole-sequence version of :class:`LatentStretcher` (the same arithmetic)."""
    if speed == 1.0 or z.shape[0] == 0:
        return z
    s = LatentStretcher(speed)
    return torch.cat([s.push(z), s.finish()])


class CrossfadeJoiner:
    """Join audio segments with an equal-power cross-fade of up to ``fade`` samples.

    Push each segment's samples as they come (``begin`` / ``push`` / ``end``); the joiner holds
    back only the last ``fade`` samples, which the next segment may still fade into. Pushing a
    whole segment at once or in pieces gives the same samples.
    """

    def __init__(self, fade: int):
        self.fade = max(0, int(fade))
        self.out = np.zeros(0, dtype=np.float32)  # produced but not yet returned
        self.prev_len: int | None = None
        self.cur_len = 0
        self.head = np.zeros(0, dtype=np.float32)
        self.mixing = False
        self.in_segment = False

    def begin(self) -> None:
        if self.in_segment:
            self.end()
        self.cur_len = 0
        self.head = np.zeros(0, dtype=np.float32)
        self.mixing = self.prev_len is not None and self.fade > 0
        self.in_segment = True

    def push(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        self.cur_len += audio.shape[0]
        if self.mixing:
            self.head = np.concatenate([self.head, audio])
            need = min(self.fade, self.prev_len or 0)
            if self.head.shape[0] < need:
                return np.zeros(0, dtype=np.float32)
            self._mix(need)
        else:
            self.out = np.concatenate([self.out, audio])
        return self._emit()

    def end(self) -> np.ndarray:
        if self.mixing:
            self._mix(min(self.fade, self.prev_len or 0, self.head.shape[0]))
        self.prev_len = self.cur_len
        self.in_segment = False
        return self._emit()

    def finish(self) -> np.ndarray:
        if self.in_segment:
            self.end()
        out, self.out = self.out, np.zeros(0, dtype=np.float32)
        return out

    def _mix(self, n: int) -> None:
        head, self.head, self.mixing = self.head, np.zeros(0, dtype=np.float32), False
        if n > 0:
            t = (np.arange(n, dtype=np.float64) + 0.5) / n * (np.pi / 2)
            mixed = self.out[-n:] * np.cos(t) + head[:n] * np.sin(t)
            self.out = np.concatenate([self.out[:-n], mixed.astype(np.float32), head[n:]])
        else:
            self.out = np.concatenate([self.out, head])

    def _emit(self) -> np.ndarray:
        n = self.out.shape[0] - self.fade
        if n <= 0:
            return np.zeros(0, dtype=np.float32)
        ready, self.out = self.out[:n], self.out[n:]
        return ready


def join_stream(segments: Iterable[Iterable[np.ndarray]], fade: int) -> Iterator[np.ndarray]:
    """Cross-fade segments that arrive piece by piece (each segment an iterable of pieces);
    yields the joined audio as soon as no later fade can change it."""
    joiner = CrossfadeJoiner(fade)
    for pieces in segments:
        joiner.begin()
        for piece in pieces:
            out = joiner.push(piece)
            if out.size:
                yield out
        out = joiner.end()
        if out.size:
            yield out
    out = joiner.finish()
    if out.size:
        yield out


def join_segments(segments: list[np.ndarray], fade: int) -> np.ndarray:
    """Cross-fade whole segments together (what :func:`join_stream` yields piece by piece)."""
    return np.concatenate([np.zeros(0, np.float32), *join_stream(([seg] for seg in segments), fade)])


def decode_groups(groups: Iterable[Tensor], to_latents: Callable[[Tensor], Tensor], decoder: StreamingDecoder,
                  speed: float) -> Iterator[np.ndarray]:
    """Flow-space frames as they are generated → audio pieces. Frames are gathered until a decoder
    chunk could be ready (fewer small calls), then go through ``to_latents`` (the inverse flow), the
    time stretch of ``speed`` and ``decoder``."""
    stretcher = LatentStretcher(speed)
    pending: list[Tensor] = []
    n_pending = 0

    def flush() -> list[np.ndarray]:
        nonlocal pending, n_pending
        if not pending:
            return []
        with torch.inference_mode():
            z = to_latents(torch.cat(pending))
        pending, n_pending = [], 0
        return decoder.push(stretcher.push(z))

    for group in groups:
        pending.append(group.float())
        n_pending += group.shape[0]
        if n_pending >= decoder.chunk:
            yield from flush()
    yield from flush()
    with torch.inference_mode():  # (no yield inside: the mode must not leak to the consumer)
        tail = decoder.push(stretcher.finish()) + decoder.finish()
    yield from tail

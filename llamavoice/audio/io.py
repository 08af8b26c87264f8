"""Audio file I/O and simple level/silence utilities.

Files are read and written with ``soundfile`` (libsndfile): ``torchaudio.load``/``save`` need
TorchCodec, which is not available here. Resampling uses ``torchaudio.functional.resample``.

Conventions: audio is float32 in [-1, 1]. Mono audio is a 1-D array of samples; multi-channel
audio is ``(channels, samples)`` (the torch convention), never soundfile's ``(samples, channels)``.
Every problem a user can cause (bad path, unreadable file, empty or silent clip) raises
:class:`llamavoice.errors.AudioError` with a one-line message that names the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import stat
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from llamavoice.errors import AudioError

# Level (dBFS) reported for digital silence or an empty array. Finite so it can be logged/serialized
# and compared without special cases; far below any real recording's noise floor.
SILENCE_DBFS = -200.0

# Extensions we mention in error messages; MP3 only when this libsndfile build can decode it.
_COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF")


def supported_formats() -> list[str]:
    """Common audio formats this installation of libsndfile can read (e.g. WAV, FLAC, OGG, MP3)."""
    available = sf.available_formats()
    return [f for f in _COMMON_FORMATS if f in available]


def _formats_hint() -> str:
    return "supported formats: " + ", ".join(supported_formats())


def _as_numpy(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    return np.asarray(audio, dtype=np.float32)


def _check_rate(sample_rate: int, what: str = "sample rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{what} must be a positive integer number of Hz, got {sample_rate!r}")
    return int(sample_rate)


# --------------------------------------------------------------------------------------------
# Reading / writing
# --------------------------------------------------------------------------------------------


def load_audio(
    path: str | Path, sample_rate: int | None = None, *, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Read an audio file as float32.

    Returns ``(audio, rate)``. With ``mono=True`` (default) channels are averaged into a 1-D array;
    otherwise the result is ``(channels, samples)``. When ``sample_rate`` is given the audio is
    resampled to it and that rate is returned; otherwise the file's own rate is returned.
    """
    path = Path(path)
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "target sample rate")
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"expected an audio file but got a directory: {path}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot access audio file {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise AudioError(
            f"{path} is not a readable audio file ({exc.error_string}); {_formats_hint()}"
        ) from exc
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{path} is not a readable audio file ({exc}); {_formats_hint()}") from exc
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from exc

    if data.shape[0] == 0:
        raise AudioError(f"audio file contains no samples (zero length): {path}")
    if not np.isfinite(data).all():
        raise AudioError(f"audio file contains NaN or infinite sample values: {path}")

    audio = data.T  # (channels, samples)
    if mono:
        audio = audio.mean(axis=0)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    rate = int(file_rate)
    if sample_rate is not None and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
        rate = sample_rate
    return audio, rate


def save_audio(
    path: str | Path,
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    subtype: str | None = None,
) -> None:
    """Write audio to ``path``; the container follows the extension (``.wav``, ``.flac``, ...).

    ``audio`` is 1-D (mono) or ``(channels, samples)``. Samples are clipped to [-1, 1] first so
    integer formats never wrap around. ``subtype=None`` means 16-bit PCM where the format allows it
    (WAV, FLAC, AIFF) and the format's own default otherwise (e.g. Vorbis for OGG). Parent
    directories are created. The file is replaced atomically: a failed or killed write leaves the
    old file intact (see :func:`atomic_output`).
    """
    path = Path(path)
    sample_rate = _check_rate(sample_rate)
    data = _as_numpy(audio)
    if data.ndim == 2 and data.shape[0] > 32:
        raise AudioError(
            f"cannot save audio of shape {tuple(data.shape)} to {path}: expected 1-D samples or "
            "(channels, samples); transpose (samples, channels) arrays first"
        )
    if data.ndim not in (1, 2) or data.size == 0:
        raise AudioError(
            f"cannot save audio of shape {tuple(data.shape)} to {path}: expected non-empty 1-D "
            "samples or (channels, samples)"
        )
    if not np.isfinite(data).all():
        raise AudioError(f"refusing to save audio with NaN or infinite samples to {path}")
    data = np.clip(data, -1.0, 1.0)
    if data.ndim == 2:
        data = data.T  # soundfile wants (samples, channels)

    fmt = audio_format(path)
    if subtype is None:
        subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
    if not sf.check_format(fmt, subtype):
        raise AudioError(
            f"cannot save {path}: format {fmt} does not support subtype {subtype}; "
            f"valid subtypes: {sorted(sf.available_subtypes(fmt))}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            sf.write(str(tmp), data, sample_rate, subtype=subtype, format=fmt)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"could not write audio file {path}: {exc}") from exc
    except OSError as exc:
        raise AudioError(f"could not write audio file {path}: {exc.strerror or exc}") from exc


def audio_format(path: str | Path) -> str:
    """The libsndfile container for ``path``'s extension (WAV, FLAC, ...); AudioError if none."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    fmt = {"wave": "WAV", "aif": "AIFF", "oga": "OGG"}.get(ext, ext.upper())
    if not ext or fmt not in sf.available_formats():
        raise AudioError(
            f"cannot save {path}: unknown audio extension '{path.suffix}'; use one of "
            + ", ".join("." + f.lower() for f in supported_formats())
        )
    return fmt


# --------------------------------------------------------------------------------------------
# Safe output files
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Write a file all at once or not at all: yields a temporary path in the same directory and,
    when the block ends without an error, renames it over ``path`` (``os.replace`` is atomic on
    one file system). A run that fails or is killed leaves the old file as it was; a failed run
    also removes its temporary file. A symlink is followed (its target is replaced); an existing
    device or FIFO (``/dev/null``) is written in place, since there is nothing there to lose.

    The parent directory must exist. OSError from creating or renaming passes through."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise IsADirectoryError(21, "is a directory", str(path))
        yield target
        return
    # O_EXCL with mode 0o666: a fresh name, and the usual permissions of a new file (umask applied),
    # not mkstemp's 0600.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        try:
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))  # an existing file keeps its permissions
            replacing = True
        except FileNotFoundError:
            replacing = False
        if replacing:  # the new data on disk before the old file goes, even if the machine crashes
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def check_output_path(
    path: str | Path, what: str = "output", audio: bool = True, inputs: Iterable[tuple[str, str | Path]] = ()
) -> Path:
    """Fail fast (before any work) if ``path`` cannot be written: an unknown audio extension, a
    directory, a missing folder more than one level deep, a folder that refuses a new file, or
    the same file as one of ``inputs`` ((description, path) pairs). Creates nothing; the output's
    own missing folder (one level) is created by :func:`make_output_parent` when writing."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{what} {path} is a directory; give a file name such as {path / 'out.wav'}")
    if audio:
        audio_format(path)
    parent = path.parent if str(path.parent) else Path(".")
    probe_dir = parent
    if not parent.exists():
        if not parent.parent.is_dir():
            raise AudioError(
                f"cannot write {what} {path}: folder {parent.parent} does not exist (only the output's own "
                "folder is created, not a whole tree); check the path or create the folders first"
            )
        probe_dir = parent.parent
    elif not parent.is_dir():
        raise AudioError(f"cannot write {what} {path}: {parent} is not a folder")
    try:  # a real test: access() says yes to root even on read-only or virtual file systems
        fd, name = tempfile.mkstemp(dir=probe_dir, prefix=".llamavoice-probe.")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise AudioError(f"cannot write {what} {path}: folder {probe_dir} is not writable "
                         f"({exc.strerror or exc})") from exc
    for description, other in inputs:
        if other is None or str(other) == "-":
            continue
        other = Path(other)
        same = os.path.samefile(path, other) if path.exists() and other.exists() \
            else os.path.realpath(path) == os.path.realpath(other)
        if same:
            raise AudioError(f"{what} {path} is the same file as the {description}; choose another output name")
    return path


class AudioWriter:
    """Write an audio file piece by piece (streaming, long decodes) and atomically: the pieces go
    to a temporary file that replaces ``path`` only when :meth:`commit` is called, so a refused or
    killed run never leaves a truncated file where the user's old one was. Use as a context
    manager; leaving the block without ``commit`` discards the temporary file."""

    def __init__(self, path: str | Path, sample_rate: int):
        self.path = Path(path)
        self.sample_rate = _check_rate(sample_rate)
        self.format = audio_format(self.path)
        self.samples = 0
        self._context = atomic_output(self.path)
        self._file: sf.SoundFile | None = None
        self._committed = False

    def __enter__(self) -> AudioWriter:
        fmt = self.format
        subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
        try:
            make_output_parent(self.path)
            tmp = self._context.__enter__()
            self._file = sf.SoundFile(str(tmp), "w", samplerate=self.sample_rate, channels=1, subtype=subtype,
                                      format=fmt)
        except (sf.SoundFileError, RuntimeError, ValueError) as exc:
            self._abort()
            raise AudioError(f"cannot write {self.path}: {exc}") from exc
        except OSError as exc:
            self._abort()
            raise AudioError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return self

    def write(self, chunk: np.ndarray) -> None:
        assert self._file is not None, "use AudioWriter as a context manager"
        data = _as_numpy(chunk)
        if not np.isfinite(data).all():
            raise AudioError(f"refusing to write audio with NaN or infinite samples to {self.path}")
        try:
            self._file.write(np.clip(data, -1.0, 1.0))
        except (sf.SoundFileError, RuntimeError, OSError) as exc:  # e.g. the disk is full
            raise AudioError(f"cannot write {self.path}: {exc}") from exc
        self.samples += data.shape[0]

    def commit(self) -> None:
        """Mark the file complete: it replaces ``path`` when the block ends."""
        self._committed = True

    def _abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._context.__exit__(AudioError, AudioError("aborted"), None)

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if self._file is not None:
            self._file.close()
        if exc_type is None and not self._committed:
            exc_type, exc = AudioError, AudioError("not committed")  # discard the temporary file
        try:
            self._context.__exit__(exc_type, exc, tb)
        except OSError as err:  # the final rename failed
            raise AudioError(f"cannot write {self.path}: {err.strerror or err}") from err


def make_output_parent(path: str | Path) -> None:
    """Create the output's own folder if it is missing (one level, never a tree)."""
    parent = Path(path).parent
    if str(parent) and not parent.exists():
        parent.mkdir()


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling along the last axis (windowed sinc, Kaiser window).

    The output has ``ceil(len * target_sr / orig_sr)`` samples. The filter settings are close to
    librosa's ``kaiser_best``: a steep low-pass just below the new Nyquist, so downsampling does not
    alias and tones keep their frequency.
    """
    orig_sr = _check_rate(orig_sr, "original sample rate")
    target_sr = _check_rate(target_sr, "target sample rate")
    data = _as_numpy(audio)
    if orig_sr == target_sr:
        return data.copy()
    # Reduce the ratio first: torchaudio builds one filter per phase of the reduced ratio.
    g = math.gcd(orig_sr, target_sr)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(data)), orig_sr // g, target_sr // g, **_RESAMPLE)
    return out.numpy().astype(np.float32, copy=False)


_RESAMPLE = dict(lowpass_filter_width=32, rolloff=0.9475, resampling_method="sinc_interp_kaiser",
                 beta=14.769656459379492)


class StreamingResampler:
    """:func:`resample` for mono audio that arrives in pieces: the concatenated outputs equal
    ``resample`` of the concatenated inputs (to float rounding).

    With the reduced ratio ``a -> b`` torchaudio computes output block i (b samples) from input
    ``[i*a - w, (i+1)*a + w)`` (w: the filter's half-width). So each push emits the blocks whose
    input has fully arrived, recomputed over a window that starts on a block boundary w samples
    (rounded up to whole blocks) before them; ``finish`` emits the rest with the zero padding of the
    one-shot call.
    """

    def __init__(self, orig_sr: int, target_sr: int):
        orig_sr = _check_rate(orig_sr, "original sample rate")
        target_sr = _check_rate(target_sr, "target sample rate")
        g = math.gcd(orig_sr, target_sr)
        self.a, self.b = orig_sr // g, target_sr // g
        self.identity = self.a == self.b
        width = math.ceil(_RESAMPLE["lowpass_filter_width"] * self.a / (min(self.a, self.b) * _RESAMPLE["rolloff"]))
        self.context_blocks = math.ceil(width / self.a)  # whole input blocks of look-back and look-ahead
        self.buffer = np.zeros(0, dtype=np.float32)  # input from block self.start on
        self.start = 0  # first input block held in the buffer
        self.emitted = 0  # output blocks returned
        self.total = 0  # input samples pushed

    def _blocks(self, first: int, last: int, final: bool) -> np.ndarray:
        """Output blocks [first, last), computed from the buffered input."""
        lo = max(first - self.context_blocks, self.start)
        window = self.buffer[(lo - self.start) * self.a :]
        if not final:
            window = window[: (last + self.context_blocks - lo) * self.a]
        out = AF.resample(torch.from_numpy(np.ascontiguousarray(window)), self.a, self.b, **_RESAMPLE).numpy()
        piece = out[(first - lo) * self.b : (last - lo) * self.b]
        self.emitted = last
        drop = max(0, last - self.context_blocks) - self.start  # blocks no later window reaches
        if drop > 0:
            self.buffer = self.buffer[drop * self.a :]
            self.start += drop
        return piece.astype(np.float32, copy=False)

    def push(self, audio: np.ndarray) -> np.ndarray:
        audio = _as_numpy(audio)
        if self.identity:
            return audio
        self.buffer = np.concatenate([self.buffer, audio])
        self.total += audio.shape[0]
        # Block i is final once the input reaches (i + 1 + context_blocks) * a.
        ready = self.total // self.a - self.context_blocks
        if ready <= self.emitted:
            return np.zeros(0, dtype=np.float32)
        return self._blocks(self.emitted, ready, final=False)

    def finish(self) -> np.ndarray:
        if self.identity:
            return np.zeros(0, dtype=np.float32)
        n_out = math.ceil(self.total * self.b / self.a)  # torchaudio's output length
        last = -(-n_out // self.b)
        if last <= self.emitted:
            return np.zeros(0, dtype=np.float32)
        first = self.emitted
        return self._blocks(first, last, final=True)[: n_out - first * self.b]


# --------------------------------------------------------------------------------------------
# Levels and silence
# --------------------------------------------------------------------------------------------


def rms_dbfs(audio: np.ndarray | torch.Tensor) -> float:
    """RMS level in dB relative to full scale (a full-scale square wave is 0 dBFS; a full-scale
    sine is about -3 dBFS). Digital silence and empty input give :data:`SILENCE_DBFS`."""
    data = _as_numpy(audio).astype(np.float64)
    if data.size == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(data))))
    return _to_db(rms)


def _to_db(amplitude: float) -> float:
    return SILENCE_DBFS if amplitude <= 10 ** (SILENCE_DBFS / 20) else 20.0 * math.log10(amplitude)


def is_silent(audio: np.ndarray | torch.Tensor, threshold_dbfs: float = -60.0) -> bool:
    """True if the overall RMS level is below ``threshold_dbfs`` (empty input counts as silent)."""
    return rms_dbfs(audio) < threshold_dbfs


def clipping_ratio(audio: np.ndarray | torch.Tensor, level: float = 0.999) -> float:
    """Fraction of samples whose magnitude reaches ``level`` (a sign of clipped recordings)."""
    data = _as_numpy(audio)
    if data.size == 0:
        return 0.0
    return float(np.mean(np.abs(data) >= level))


def _frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive non-overlapping frames of a 1-D signal; the last partial frame counts."""
    n = math.ceil(audio.shape[-1] / frame)
    padded = np.zeros(n * frame, dtype=np.float64)
    padded[: audio.shape[-1]] = audio
    power = np.square(padded).reshape(n, frame).sum(axis=1)
    counts = np.full(n, frame, dtype=np.float64)
    counts[-1] = audio.shape[-1] - (n - 1) * frame
    return np.sqrt(power / counts)


def active_rms_dbfs(audio: np.ndarray | torch.Tensor, frame: int = 512, range_db: float = 40.0) -> float:
    """RMS level (dBFS) of the non-silent parts: frames within ``range_db`` of the loudest frame.

    This is the level :func:`normalize_loudness` sets, so pauses between words do not pull the
    level down. Multi-channel input is averaged to mono first.
    """
    data = _as_numpy(audio)
    if data.ndim > 1:
        data = data.reshape(-1, data.shape[-1]).mean(axis=0)
    if data.size == 0:
        return SILENCE_DBFS
    frame_rms = _frame_rms(data, frame)
    loudest = float(frame_rms.max())
    if loudest <= 0.0:
        return SILENCE_DBFS
    active = frame_rms >= loudest * 10 ** (-range_db / 20)
    counts = np.full(frame_rms.shape, frame, dtype=np.float64)
    counts[-1] = data.shape[-1] - (frame_rms.shape[0] - 1) * frame
    power = np.sum(np.square(frame_rms[active]) * counts[active]) / np.sum(counts[active])
    return _to_db(float(np.sqrt(power)))


def normalize_loudness(
    audio: np.ndarray | torch.Tensor, target_dbfs: float = -20.0, peak: float = 0.95
) -> np.ndarray:
    """Scale audio so its active RMS level (see :func:`active_rms_dbfs`) is ``target_dbfs``.

    The gain is then lowered if needed so the peak does not exceed ``peak``: the result never
    clips, even if that means it ends up quieter than the target. Silent input (active level below
    -60 dBFS, the :func:`is_silent` default) is returned unchanged, since amplifying a noise floor
    to speech level would only produce loud hiss.
    """
    data = _as_numpy(audio)
    level = active_rms_dbfs(data)
    if level < -60.0:
        return data.copy()
    gain = 10 ** ((target_dbfs - level) / 20)
    max_abs = float(np.max(np.abs(data)))
    if max_abs * gain > peak:
        gain = peak / max_abs
    return (data * gain).astype(np.float32)


def trim_silence(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    threshold_db: float = -40.0,
    pad_ms: float = 50,
) -> np.ndarray:
    """Cut leading and trailing silence, keeping ``pad_ms`` of margin on each side.

    Works on 10 ms frames: a frame is silent if its RMS is more than ``|threshold_db|`` dB below
    the loudest frame's. Being relative to the peak, it works for quiet and loud recordings alike.
    Silence inside the clip is kept. All-zero input is returned unchanged. Multi-channel input
    ``(channels, samples)`` is trimmed on the channel average, all channels alike.
    """
    sample_rate = _check_rate(sample_rate)
    data = _as_numpy(audio)
    if data.size == 0:
        return data.copy()
    mono = data if data.ndim == 1 else data.reshape(-1, data.shape[-1]).mean(axis=0)
    frame = max(1, sample_rate // 100)
    frame_rms = _frame_rms(mono, frame)
    loudest = float(frame_rms.max())
    if loudest <= 0.0:
        return data.copy()
    active = np.flatnonzero(frame_rms >= loudest * 10 ** (-abs(threshold_db) / 20))
    pad = int(round(pad_ms * sample_rate / 1000))
    start = max(0, int(active[0]) * frame - pad)
    end = min(mono.shape[0], (int(active[-1]) + 1) * frame + pad)
    return data[..., start:end].copy()


# --------------------------------------------------------------------------------------------
# Voice prompts
# --------------------------------------------------------------------------------------------


def load_prompt_audio(
    path: str | Path, sample_rate: int, min_seconds: float = 1.0, max_seconds: float = 30.0
) -> np.ndarray:
    """Load a reference clip for voice cloning, ready for the encoder.

    Loads as mono at ``sample_rate``, rejects silent clips, trims leading/trailing silence,
    rejects clips shorter than ``min_seconds`` (measured after trimming, i.e. actual sound), keeps
    only the first ``max_seconds`` of longer ones, and normalizes the loudness.
    """
    _check_prompt_limits(min_seconds, max_seconds)
    audio, rate = load_audio(path, sample_rate, mono=True)
    return _ready_prompt(audio, rate, f"voice prompt {path}", str(path), min_seconds, max_seconds)


def prepare_prompt_array(
    clip: np.ndarray | torch.Tensor, sample_rate: int | None, target_rate: int, min_seconds: float = 1.0,
    max_seconds: float = 30.0,
) -> np.ndarray:
    """The array version of :func:`load_prompt_audio` (samples in memory, e.g. an upload): mono,
    resampled to ``target_rate``, then the same checks, trimming, cut and loudness."""
    _check_prompt_limits(min_seconds, max_seconds)
    if sample_rate is None:
        raise AudioError("an audio array needs its sample_rate (encode_voice(array, sample_rate=...))")
    try:
        audio = clip.detach().cpu().float().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip, np.float32)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"voice clip must be a path or an array of samples, got {type(clip).__name__}") from exc
    if audio.ndim == 2:
        # (channels, samples) or soundfile's (samples, channels): average the short axis.
        audio = audio.mean(axis=0 if audio.shape[0] <= audio.shape[1] else 1)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(f"voice clip array must be 1-D or (channels, samples), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError("voice clip contains NaN or infinite samples")
    audio = resample(audio, int(sample_rate), target_rate)
    return _ready_prompt(audio, target_rate, "voice clip", "array", min_seconds, max_seconds)


def _check_prompt_limits(min_seconds: float, max_seconds: float) -> None:
    if max_seconds < min_seconds:
        raise AudioError(
            f"prompt length limits are inconsistent: max_seconds={max_seconds} < min_seconds={min_seconds}"
        )


def _ready_prompt(audio: np.ndarray, rate: int, what: str, source: str, min_seconds: float,
                  max_seconds: float) -> np.ndarray:
    """Mono audio at ``rate`` → a voice prompt: refuse silence, trim, refuse too little sound, keep
    the first ``max_seconds``, warn if it does not look like speech, normalize the loudness."""
    if is_silent(audio):
        raise AudioError(
            f"{what} is silent (level {rms_dbfs(audio):.1f} dBFS); "
            "record or choose a clip where the speaker is audible"
        )
    audio = trim_silence(audio, rate)
    seconds = audio.shape[0] / rate
    if seconds < min_seconds:
        raise AudioError(
            f"{what} is too short: {seconds:.2f} s of sound after trimming silence, need at least {min_seconds:g} s"
        )
    audio = audio[: int(max_seconds * rate)]
    warn_prompt_problems(audio, rate, source, stacklevel=4)  # points at the caller of load_prompt_audio
    return normalize_loudness(audio)


def warn_prompt_problems(audio: np.ndarray, sample_rate: int, source: str, stacklevel: int = 2) -> None:
    """One warning naming the clip and every measured reason it does not look like speech."""
    problems = prompt_problems(audio, sample_rate)
    if problems:
        warnings.warn(f"voice prompt {source} {'; '.join(problems)}. The voice will sound like it: "
                      "use a clip of clear speech", stacklevel=stacklevel)


# Thresholds measured on 96 clips of 16 voices of the offline corpus (docs/corpus.md), trimmed and
# normalized: spectral flatness 0.001-0.023, level spread 6.6-12 dB, 70-97 % of the clip active;
# white noise measures 0.57, pink noise 0.35, a steady tone or hum 0.0 dB of spread.
_NOISE_FLATNESS = 0.2
_STEADY_SPREAD_DB = 1.0
_MIN_ACTIVE = 0.4
_QUIET_DBFS = -45.0


def prompt_problems(audio: np.ndarray, sample_rate: int) -> list[str]:
    """Reasons, with the measured figures, why a (trimmed, not yet normalized) voice prompt is
    probably not speech: noise, a steady tone, mostly silence or a very low level. The model clones
    whatever it is given, so such a prompt gives noise or babble; these are warnings, not errors."""
    data = _as_numpy(audio).astype(np.float64)
    problems = []
    level = rms_dbfs(data)
    if level < _QUIET_DBFS:
        problems.append(f"is very quiet ({level:.1f} dBFS; speech is usually -35 to -15 dBFS): it is amplified "
                        "to speech level, noise floor and all")
    n_fft, hop = 1024 * sample_rate // 24000 or 256, 256 * sample_rate // 24000 or 64
    if data.shape[0] >= 4 * n_fft:
        frames = np.lib.stride_tricks.sliding_window_view(data, n_fft)[::hop] * np.hanning(n_fft)
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-20
        freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
        band = power[:, (freqs >= 100) & (freqs <= min(6000, sample_rate / 2))]
        frame_db = 10 * np.log10(band.mean(axis=1))
        loud = band[frame_db > frame_db.max() - 30]
        flatness = float(np.median(np.exp(np.log(loud).mean(axis=1)) / loud.mean(axis=1)))
        if flatness > _NOISE_FLATNESS:
            problems.append(f"sounds like noise, not speech (spectral flatness {flatness:.2f}; speech measures "
                            f"below 0.03, white noise 0.57)")
    frame = max(1, sample_rate // 50)  # 20 ms
    if data.shape[0] >= 10 * frame:
        env = 10 * np.log10(_frame_rms(data, frame) ** 2 + 1e-20)
        active = env > env.max() - 40
        spread = float(np.std(env[active]))
        if spread < _STEADY_SPREAD_DB:
            problems.append(f"is a steady sound, not speech (its level varies by {spread:.1f} dB; speech by 6 dB "
                            "or more between syllables)")
        if active.mean() < _MIN_ACTIVE:
            problems.append(f"is mostly silence (sound in {100 * active.mean():.0f} % of it; speech clips have "
                            "70 % or more)")
    return problems

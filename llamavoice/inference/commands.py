"""Inference commands: synthesize, speak, encode, generate, decode, interactive.

``llamavoice synthesize`` and ``python generate_voice.py`` run the same function. Heavy imports
(torch, the model) happen inside the commands so ``--help`` stays fast. Every failure a user can
cause surfaces as a LlamaVoiceError, which the front end prints as one line (exit code 1).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from llamavoice.errors import AudioError, LlamaVoiceError, TextError

if TYPE_CHECKING:
    from llamavoice.inference.api import TTS

# Noise from dependencies that says nothing to a user of the command line.
_QUIET = (
    r".*torch\.jit\.script.*deprecated",
    r".*torch\.nn\.utils\.weight_norm.*deprecated",
    r".*Torchinductor does not support code generation for complex operators",
)


@contextlib.contextmanager
def cli_warnings() -> Iterator[None]:
    """Show our warnings as one ``warning: ...`` line each; hide known dependency noise."""
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            typer.echo(f"warning: {message}", err=True)

        warnings.showwarning = show
        yield


def run_app(app: typer.Typer) -> None:
    """Run a Typer app like ``llamavoice.cli.main``: usage errors are click's (exit code 2), and a
    LlamaVoiceError is one ``error: ...`` line with exit code 1 instead of a traceback."""
    try:
        app()
    except LlamaVoiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------


def _load(
    model: Path | None, device: str, dtype: str, compile: bool = False, attention: str = "sdpa",
    threads: int | None = None,
) -> TTS:
    from llamavoice.errors import ConfigError
    from llamavoice.inference.api import load

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    return load(model, device=device, dtype=dtype, compile=compile, attention=attention,
                threads="auto" if threads is None else threads)


def _read_text(text: str | None, text_file: Path | None) -> str:
    if text is not None and text_file is not None:
        raise TextError("pass either --text or --text-file, not both")
    if text_file is not None:
        if not text_file.is_file():
            raise TextError(f"text file not found: {text_file}")
        try:
            return text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text file {text_file} is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
        except OSError as exc:
            raise TextError(f"cannot read text file {text_file}: {exc.strerror or exc}") from exc
    if text is None:
        raise TextError("no text given: pass --text TEXT or --text-file FILE")
    return text


def _overrides(**values: Any) -> dict[str, Any]:
    """Sampling flags the user actually gave (the rest keep the model's defaults)."""
    return {k: v for k, v in values.items() if v is not None}


class _StreamWriter:
    """Write audio chunks as they arrive: a WAV/FLAC file, or raw 16-bit PCM on stdout for ``-``."""

    def __init__(self, output: str, sample_rate: int):
        import soundfile as sf

        self.raw = output == "-"
        self.count = 0
        if self.raw:
            self.file = None
            return
        path = Path(output)
        fmt = path.suffix.lower().lstrip(".").upper()
        if fmt not in ("WAV", "FLAC"):
            raise AudioError(f"--stream writes .wav or .flac files (or '-' for raw PCM on stdout), not {path.name}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format=fmt)
        except (sf.SoundFileError, OSError, RuntimeError) as exc:
            raise AudioError(f"cannot write {path}: {exc}") from exc

    def write(self, chunk) -> None:  # noqa: ANN001
        import numpy as np

        chunk = np.clip(chunk, -1.0, 1.0)
        self.count += chunk.shape[0]
        if self.raw:
            sys.stdout.buffer.write((chunk * 32767).astype("<i2").tobytes())
            sys.stdout.buffer.flush()
        else:
            self.file.write(chunk)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _speak(
    tts: TTS,
    text: str,
    voice: str | None,
    output: str,
    overrides: dict[str, Any],
    stream: bool = False,
    chunk_frames: int = 4,
    max_chunk_frames: int | None = 16,
    batch_size: int = 8,
    progress: bool = True,
) -> None:
    from llamavoice.audio import save_audio

    start = time.perf_counter()
    seed = overrides.get("seed")
    voice_obj = tts.get_voice(voice, seed)
    sr = tts.sample_rate
    if stream:
        writer = _StreamWriter(output, sr)
        first = None
        try:
            for chunk in tts.stream(text, voice_obj, chunk_frames=chunk_frames, max_chunk_frames=max_chunk_frames,
                                    progress=progress or None, **overrides):
                if first is None:
                    first = time.perf_counter() - start
                writer.write(chunk)
        finally:
            writer.close()
        samples = writer.count
        extra = f", first audio after {first:.2f} s" if first is not None else ""
    else:
        audio, sr = tts.synthesize(text, voice_obj, progress=progress or None, batch_size=batch_size, **overrides)
        save_audio(output, audio, sr)
        samples, extra = audio.shape[0], ""
    elapsed = time.perf_counter() - start
    seconds = samples / sr
    rtf = elapsed / seconds if seconds else float("nan")
    where = "stdout" if output == "-" else output
    typer.echo(f"wrote {where}: {seconds:.2f} s of audio at {sr} Hz in {elapsed:.2f} s (RTF {rtf:.2f}{extra})",
               err=True)


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------

_MODEL_HELP = "Model directory (default: the installed default model)."
_THREADS_HELP = "CPU threads for torch (default: one per core the load average leaves free, 1 to 4)."
_DTYPE_HELP = ("Precision: auto (default: the fastest measured for the device), fp32 (exact reference), "
               "bf16, fp16, int8, or LM,DECODER such as int8,bf16.")
_VOICE_HELP = ("Voice: an audio clip (3-15 s, any format), a saved voice file, a voice name of the model, "
               "or 'random' (a voice chosen by --seed). Default: the model's default voice.")


def synthesize_command(
    input_text: str | None = typer.Option(None, "--input_text", "--input-text", "--text", "-t", help="Text to speak."),
    text_file: Path | None = typer.Option(None, "--text-file", "-f", help="Read the text from a UTF-8 file."),
    voice: str | None = typer.Option(None, "--voice", "-v", help=_VOICE_HELP),
    output: str = typer.Option("out.wav", "--output", "-o", help="Output audio file ('-' with --stream: raw PCM)."),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    temperature: float | None = typer.Option(None, help="Temperature on σ (0 = use μ)."),
    min_temperature: float | None = typer.Option(None, help="Dynamic temperature: lower τ to this where unsure."),
    cfg_weight: float | None = typer.Option(None, help="Classifier-free guidance weight on μ (0 = off)."),
    stop_threshold: float | None = typer.Option(None, help="Stop when p(stop) exceeds this."),
    speed: float | None = typer.Option(None, help="Speaking rate factor (>1 faster)."),
    max_seconds: float | None = typer.Option(None, help="Cap on the length of each sentence."),
    min_seconds_per_char: float | None = typer.Option(None, help="Minimum length per character of text."),
    max_seconds_per_char: float | None = typer.Option(None, help="Maximum length per character (+ slack)."),
    stall_action: str | None = typer.Option(None, help="On stalled latents: resample, stop or off."),
    num_samples: int | None = typer.Option(None, "--num-samples", "-n", help="Best-of-N candidates per sentence."),
    seed: int | None = typer.Option(None, help="Seed for exact reproducibility."),
    max_chars: int | None = typer.Option(None, help="Longest text chunk (characters) spoken in one go."),
    stream: bool = typer.Option(False, "--stream", help="Write audio as it is generated."),
    chunk_frames: int = typer.Option(4, help="Latent frames in the first streamed chunk (25 per second)."),
    max_chunk_frames: int = typer.Option(16, help="Later streamed chunks double up to this many frames."),
    batch_size: int = typer.Option(8, help="Sentences generated together."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the decoding step."),
    attention: str = typer.Option("sdpa", help="Attention kernel: sdpa or math."),
    threads: int | None = typer.Option(None, help=_THREADS_HELP),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar for long texts."),
) -> None:
    """Speak a text (any length) and write an audio file."""
    with cli_warnings():
        text = _read_text(input_text, text_file)
        overrides = _overrides(
            temperature=temperature, min_temperature=min_temperature, cfg_weight=cfg_weight,
            stop_threshold=stop_threshold, speed=speed, max_seconds=max_seconds, stall_action=stall_action,
            num_samples=num_samples, seed=seed, max_chars=max_chars, min_seconds_per_char=min_seconds_per_char,
            max_seconds_per_char=max_seconds_per_char,
        )
        tts = _load(model, device, dtype, compile, attention, threads)
        _speak(tts, text, voice, output, overrides, stream=stream, chunk_frames=chunk_frames,
               max_chunk_frames=max_chunk_frames, batch_size=batch_size, progress=progress)


def speak_command(
    text: str = typer.Argument(..., help="Text to speak."),
    ref: str = typer.Argument(..., help="Reference clip (or saved voice / voice name) to clone."),
    out: str = typer.Argument(..., help="Output audio file."),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    seed: int | None = typer.Option(None, help="Seed for exact reproducibility."),
    temperature: float | None = typer.Option(None, help="Temperature on σ."),
    cfg_weight: float | None = typer.Option(None, help="Classifier-free guidance weight."),
    speed: float | None = typer.Option(None, help="Speaking rate factor."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    threads: int | None = typer.Option(None, help=_THREADS_HELP),
) -> None:
    """Shortcut: speak TEXT in the voice of REF and write OUT."""
    with cli_warnings():
        overrides = _overrides(seed=seed, temperature=temperature, cfg_weight=cfg_weight, speed=speed)
        tts = _load(model, device, dtype, threads=threads)
        _speak(tts, text, ref, out, overrides)


def encode_command(
    clip: Path = typer.Argument(..., help="Reference clip, 3-15 s, any common format."),
    output: Path = typer.Option(Path("voice.safetensors"), "--output", "-o", help="Voice file to write."),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    name: str = typer.Option("", help="Name stored in the voice file."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Step 1 of 3: encode a voice clip once into a reusable voice file (safetensors)."""
    with cli_warnings():
        tts = _load(model, device, "fp32")
        voice = tts.encode_voice(clip, name=name or clip.stem)
        voice.save(output)
        typer.echo(f"wrote {output}: voice {voice.name!r}, {voice.duration:.2f} s, {voice.num_frames} frames", err=True)


def generate_command(
    input_text: str | None = typer.Option(None, "--text", "--input_text", "-t", help="Text to speak."),
    text_file: Path | None = typer.Option(None, "--text-file", "-f", help="Read the text from a UTF-8 file."),
    voice: str | None = typer.Option(None, "--voice", "-v", help=_VOICE_HELP),
    output: Path = typer.Option(Path("latents.npy"), "--output", "-o", help="Latents file (.npy) to write."),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    temperature: float | None = typer.Option(None, help="Temperature on σ."),
    min_temperature: float | None = typer.Option(None, help="Dynamic temperature floor."),
    cfg_weight: float | None = typer.Option(None, help="Classifier-free guidance weight."),
    stop_threshold: float | None = typer.Option(None, help="Stop when p(stop) exceeds this."),
    speed: float | None = typer.Option(None, help="Speaking rate factor."),
    max_seconds: float | None = typer.Option(None, help="Cap on the length of each sentence."),
    num_samples: int | None = typer.Option(None, "--num-samples", "-n", help="Best-of-N candidates."),
    seed: int | None = typer.Option(None, help="Seed for exact reproducibility."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the decoding step."),
    threads: int | None = typer.Option(None, help=_THREADS_HELP),
) -> None:
    """Step 2 of 3: text (+ voice) → VAE latents saved as .npy (frames × latent_dim)."""
    import numpy as np

    with cli_warnings():
        text = _read_text(input_text, text_file)
        overrides = _overrides(
            temperature=temperature, min_temperature=min_temperature, cfg_weight=cfg_weight,
            stop_threshold=stop_threshold, speed=speed, max_seconds=max_seconds, num_samples=num_samples, seed=seed,
        )
        tts = _load(model, device, dtype, compile, threads=threads)
        z = tts.generate_latents(text, voice, **overrides)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            with open(output, "wb") as f:
                np.save(f, z, allow_pickle=False)
        except OSError as exc:
            raise AudioError(f"cannot write latents to {output}: {exc.strerror or exc}") from exc
        typer.echo(f"wrote {output}: {z.shape[0]} frames ({z.shape[0] / tts.frame_rate:.2f} s) × {z.shape[1]}",
                   err=True)


def decode_command(
    latents: Path = typer.Argument(..., help="Latents file (.npy) from `llamavoice generate`."),
    output: str = typer.Option("out.wav", "--output", "-o", help="Output audio file."),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Step 3 of 3: VAE latents (.npy) → audio file."""
    import numpy as np

    from llamavoice.audio import save_audio

    with cli_warnings():
        if not latents.is_file():
            raise AudioError(f"latents file not found: {latents}")
        try:
            z = np.load(latents, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise AudioError(f"{latents} is not a .npy array of latents ({exc}); make one with `llamavoice generate`") \
                from exc
        tts = _load(model, device, "auto")  # the decoder precision `generate` and `synthesize` use
        audio = tts.decode_latents(z)
        save_audio(output, audio, tts.sample_rate)
        typer.echo(f"wrote {output}: {audio.shape[0] / tts.sample_rate:.2f} s of audio", err=True)


def interactive_command(
    voice: str | None = typer.Option(None, "--voice", "-v", help=_VOICE_HELP),
    model: Path | None = typer.Option(None, "--model", "-m", help=_MODEL_HELP),
    output_dir: Path = typer.Option(Path("llamavoice_out"), "--output-dir", "-o", help="Where the WAVs go."),
    seed: int | None = typer.Option(None, help="Seed for every line."),
    temperature: float | None = typer.Option(None, help="Temperature on σ."),
    cfg_weight: float | None = typer.Option(None, help="Classifier-free guidance weight."),
    speed: float | None = typer.Option(None, help="Speaking rate factor."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help=_DTYPE_HELP),
    threads: int | None = typer.Option(None, help=_THREADS_HELP),
) -> None:
    """Type lines; each is spoken and saved in turn. `exit` (or end of input) quits."""
    from llamavoice.audio import save_audio

    with cli_warnings():
        overrides = _overrides(seed=seed, temperature=temperature, cfg_weight=cfg_weight, speed=speed)
        tts = _load(model, device, dtype, threads=threads)
        voice_obj = tts.get_voice(voice, seed)
        typer.echo(f"voice {voice_obj.name!r} ready. Type a line and press Enter; 'exit' quits.", err=True)
        count = 0
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            line = line.strip()
            if line.lower() in ("exit", "quit"):
                break
            if not line:
                continue
            try:
                audio, sr = tts.synthesize(line, voice_obj, **overrides)
            except TextError as exc:  # a bad line should not end the session
                typer.echo(f"error: {exc}", err=True)
                continue
            count += 1
            path = output_dir / f"{count:03d}.wav"
            save_audio(path, audio, sr)
            typer.echo(f"saved {path} ({audio.shape[0] / sr:.2f} s)")
        typer.echo(f"bye: {count} line(s) spoken", err=True)


def register(app: typer.Typer) -> None:
    app.command("synthesize")(synthesize_command)
    app.command("speak")(speak_command)
    app.command("encode")(encode_command)
    app.command("generate")(generate_command)
    app.command("decode")(decode_command)
    app.command("interactive")(interactive_command)

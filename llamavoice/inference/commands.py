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
from typing import TYPE_CHECKING, Annotated, Any

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
    from llamavoice.inference.api import load

    if threads is not None:
        _check_int("--threads", threads, 1, 1024)
    return load(model, device=device, dtype=dtype, compile=compile, attention=attention,
                threads="auto" if threads is None else threads)


def _read_text(text: str | None, text_file: Path | None, max_total_chars: int | None = None) -> str:
    from llamavoice.inference.sampling import DEFAULT_MAX_TOTAL_CHARS

    if text is not None and text_file is not None:
        raise TextError("pass either --text or --text-file, not both")
    if text_file is not None:
        if not text_file.is_file():
            raise TextError(f"text file not found: {text_file}")
        cap = max_total_chars or DEFAULT_MAX_TOTAL_CHARS
        size = text_file.stat().st_size
        if size > 4 * cap:  # more bytes than `cap` characters can take in UTF-8: do not even read it
            raise TextError(f"text file {text_file} is {size:,} bytes, more than max_total_chars={cap:,} characters "
                            "can be; raise --max-total-chars or split the file")
        try:
            return text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text file {text_file} is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
        except OSError as exc:
            raise TextError(f"cannot read text file {text_file}: {exc.strerror or exc}") from exc
    if text is None:
        raise TextError("no text given: pass --text TEXT or --text-file FILE")
    return text


def _overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The sampling flags the user actually gave, from a command's parameters (``locals()`` at its
    start: the ones named like :class:`SamplingConfig` fields), each checked here, before the model
    is loaded, with the same rules as the Python API. Flags not given keep the model's defaults."""
    from dataclasses import fields

    from llamavoice.inference.sampling import SamplingConfig, check_options

    names = {f.name for f in fields(SamplingConfig)}
    return check_options({k: v for k, v in params.items() if k in names and v is not None})


def _check_int(flag: str, value: int, low: int, high: int) -> int:
    from llamavoice.errors import ConfigError

    if not low <= value <= high:
        raise ConfigError(f"{flag} must be between {low} and {high}, got {value}")
    return value


def _input_file(what: str, path: str | Path | None) -> tuple[str, Path] | None:
    """(description, path) of an input that is a file, for the output-is-an-input check."""
    if path is None or str(path) == "-" or not Path(path).is_file():
        return None
    return what, Path(path)


def _check_output(output: str | Path, what: str, audio: bool, *inputs: tuple[str, Path] | None) -> None:
    """Refuse a bad output path in milliseconds, before the model is loaded or anything is run."""
    from llamavoice.audio.io import check_output_path

    check_output_path(output, what, audio=audio, inputs=[i for i in inputs if i is not None])


def _precheck_text(text: str, overrides: dict[str, Any]) -> None:
    """The checks of a text that need no model (length cap, SSML markup, script), so a refused
    text fails before the model is loaded."""
    from llamavoice.inference.chunking import check_text
    from llamavoice.inference.sampling import SamplingConfig

    check_text(text, SamplingConfig().replace(**{k: v for k, v in overrides.items()
                                                 if k in ("max_total_chars", "speed")}))


class _RawWriter:
    """Raw 16-bit PCM on stdout (``--stream -o -``): nothing to replace atomically."""

    samples = 0

    def __enter__(self) -> _RawWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write(self, chunk) -> None:  # noqa: ANN001
        import numpy as np

        chunk = np.clip(chunk, -1.0, 1.0)
        self.samples += chunk.shape[0]
        sys.stdout.buffer.write((chunk * 32767).astype("<i2").tobytes())
        sys.stdout.buffer.flush()

    def commit(self) -> None:
        pass


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
    from llamavoice.audio.io import AudioWriter

    start = time.perf_counter()
    seed = overrides.get("seed")
    voice_obj = tts.get_voice(voice, seed)
    sr = tts.sample_rate
    if stream:
        # stream() checks the text and every option when called: nothing is opened before that.
        chunks = tts.stream(text, voice_obj, chunk_frames=chunk_frames, max_chunk_frames=max_chunk_frames,
                            progress=progress or None, **overrides)
        first = None
        writer = _RawWriter() if output == "-" else AudioWriter(output, sr)
        with writer:
            for chunk in chunks:
                if first is None:
                    first = time.perf_counter() - start
                writer.write(chunk)
            writer.commit()
        samples = writer.samples
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

# The options several commands share, defined once (Typer reads them from the annotations).
_VOICE_HELP = ("Voice: an audio clip (3-15 s, any format), a saved voice file, a voice name of the model, "
               "or 'random' (a voice chosen by --seed). Default: the model's default voice.")
InputText = Annotated[str | None, typer.Option("--input_text", "--input-text", "--text", "-t", help="Text to speak.")]
TextFile = Annotated[Path | None, typer.Option("--text-file", "-f", help="Read the text from a UTF-8 file.")]
VoiceOption = Annotated[str | None, typer.Option("--voice", "-v", help=_VOICE_HELP)]
Model = Annotated[Path | None, typer.Option("--model", "-m",
                                            help="Model directory (default: the installed default model).")]
Temperature = Annotated[float | None, typer.Option(help="Temperature on σ (0 = use μ).")]
MinTemperature = Annotated[float | None, typer.Option(help="Dynamic temperature: lower τ to this where unsure.")]
CfgWeight = Annotated[float | None, typer.Option(help="Classifier-free guidance weight on μ (0 = off).")]
StopThreshold = Annotated[float | None, typer.Option(help="Stop when p(stop) exceeds this.")]
Speed = Annotated[float | None, typer.Option(help="Speaking rate factor (>1 faster).")]
MaxSeconds = Annotated[float | None, typer.Option(help="Cap on the length of each sentence.")]
NumSamples = Annotated[int | None, typer.Option("--num-samples", "-n", help="Best-of-N candidates per sentence.")]
Seed = Annotated[int | None, typer.Option(help="Seed for exact reproducibility.")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[str, typer.Option(help="Precision: auto (the fastest measured for the device), fp32 (exact "
                                        "reference), bf16, fp16, int8, or LM,DECODER such as int8,bf16.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the decoding step.")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads for torch (default: one per core the load average leaves free, 1 to 4).")]


def synthesize_command(
    input_text: InputText = None,
    text_file: TextFile = None,
    voice: VoiceOption = None,
    output: str = typer.Option("out.wav", "--output", "-o", help="Output audio file ('-' with --stream: raw PCM)."),
    model: Model = None,
    temperature: Temperature = None,
    min_temperature: MinTemperature = None,
    cfg_weight: CfgWeight = None,
    stop_threshold: StopThreshold = None,
    speed: Speed = None,
    max_seconds: MaxSeconds = None,
    min_seconds_per_char: float | None = typer.Option(None, help="Minimum length per character of text."),
    max_seconds_per_char: float | None = typer.Option(None, help="Maximum length per character (+ slack)."),
    stall_action: str | None = typer.Option(None, help="On stalled latents: resample, stop or off."),
    num_samples: NumSamples = None,
    seed: Seed = None,
    max_chars: int | None = typer.Option(None, help="Longest text chunk (characters) spoken in one go."),
    max_total_chars: int | None = typer.Option(
        None, help="Longest text accepted in one run (default 20000 characters); raise it for a book."),
    stream: bool = typer.Option(False, "--stream", help="Write audio as it is generated."),
    chunk_frames: int = typer.Option(4, help="Latent frames in the first streamed chunk (25 per second)."),
    max_chunk_frames: int = typer.Option(16, help="Later streamed chunks double up to this many frames."),
    batch_size: int = typer.Option(8, help="Sentences generated together."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Compile = False,
    attention: str = typer.Option("sdpa", help="Attention kernel: sdpa or math."),
    threads: Threads = None,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar for long texts."),
) -> None:
    """Speak a text (any length) and write an audio file. SSML (<speak>, <break>, <p>, <s>,
    <prosody rate>) is understood."""
    with cli_warnings():
        overrides = _overrides(locals())
        text = _read_text(input_text, text_file, overrides.get("max_total_chars"))
        _check_stream_options(stream, output, overrides, chunk_frames, max_chunk_frames)
        _check_int("--batch-size", batch_size, 1, 256)
        if not (stream and output == "-"):
            _check_output(output, "output", True, _input_file("voice clip", voice), _input_file("text file", text_file))
        _precheck_text(text, overrides)
        tts = _load(model, device, dtype, compile, attention, threads)
        _speak(tts, text, voice, output, overrides, stream=stream, chunk_frames=chunk_frames,
               max_chunk_frames=max_chunk_frames, batch_size=batch_size, progress=progress)


def _check_stream_options(
    stream: bool, output: str, overrides: dict[str, Any], chunk_frames: int, max_chunk_frames: int
) -> None:
    from llamavoice.errors import ConfigError
    from llamavoice.inference.streaming import check_chunk_frames

    check_chunk_frames("--chunk-frames", chunk_frames)
    check_chunk_frames("--max-chunk-frames", max_chunk_frames)
    if output == "-" and not stream:
        raise AudioError("'-o -' (raw PCM on stdout) needs --stream; give a file name such as out.wav otherwise")
    if stream:
        if overrides.get("num_samples", 1) != 1:
            raise ConfigError("--num-samples (best-of-N) needs whole candidates and cannot stream; drop --stream")
        if output != "-" and Path(output).suffix.lower() not in (".wav", ".flac"):
            raise AudioError(f"--stream writes .wav or .flac files (or '-' for raw PCM on stdout), not {output}")


def speak_command(
    text: str = typer.Argument(..., help="Text to speak."),
    ref: str = typer.Argument(..., help="Reference clip (or saved voice / voice name) to clone."),
    out: str = typer.Argument(..., help="Output audio file."),
    model: Model = None,
    seed: Seed = None,
    temperature: Temperature = None,
    cfg_weight: CfgWeight = None,
    speed: Speed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Shortcut: speak TEXT in the voice of REF and write OUT."""
    with cli_warnings():
        overrides = _overrides(locals())
        _check_output(out, "output", True, _input_file("reference clip", ref))
        _precheck_text(text, overrides)
        tts = _load(model, device, dtype, threads=threads)
        _speak(tts, text, ref, out, overrides)


def encode_command(
    clip: Path = typer.Argument(..., help="Reference clip, 3-15 s, any common format."),
    output: Path = typer.Option(Path("voice.safetensors"), "--output", "-o", help="Voice file to write."),
    model: Model = None,
    name: str = typer.Option("", help="Name stored in the voice file."),
    device: Device = "auto",
) -> None:
    """Step 1 of 3: encode a voice clip once into a reusable voice file (safetensors)."""
    with cli_warnings():
        if not clip.is_file():
            raise AudioError(f"voice clip not found: {clip}")
        _check_output(output, "voice file", False, _input_file("voice clip", clip))
        tts = _load(model, device, "fp32")
        voice = tts.encode_voice(clip, name=name or clip.stem)
        voice.save(output)
        typer.echo(f"wrote {output}: voice {voice.name!r}, {voice.duration:.2f} s, {voice.num_frames} frames", err=True)


def generate_command(
    input_text: InputText = None,
    text_file: TextFile = None,
    voice: VoiceOption = None,
    output: Path = typer.Option(Path("latents.npy"), "--output", "-o", help="Latents file (.npy) to write."),
    model: Model = None,
    temperature: Temperature = None,
    min_temperature: MinTemperature = None,
    cfg_weight: CfgWeight = None,
    stop_threshold: StopThreshold = None,
    speed: Speed = None,
    max_seconds: MaxSeconds = None,
    num_samples: NumSamples = None,
    seed: Seed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Compile = False,
    threads: Threads = None,
) -> None:
    """Step 2 of 3: text (+ voice) → VAE latents saved as .npy (frames × latent_dim)."""
    import numpy as np

    from llamavoice.audio.io import atomic_output, make_output_parent

    with cli_warnings():
        text = _read_text(input_text, text_file)
        overrides = _overrides(locals())
        _check_output(output, "latents file", False, _input_file("voice", voice), _input_file("text file", text_file))
        _precheck_text(text, overrides)
        tts = _load(model, device, dtype, compile, threads=threads)
        z = tts.generate_latents(text, voice, **overrides)
        try:
            make_output_parent(output)
            with atomic_output(output) as tmp, open(tmp, "wb") as f:
                np.save(f, z, allow_pickle=False)
        except OSError as exc:
            raise AudioError(f"cannot write latents to {output}: {exc.strerror or exc}") from exc
        typer.echo(f"wrote {output}: {z.shape[0]} frames ({z.shape[0] / tts.frame_rate:.2f} s) × {z.shape[1]}",
                   err=True)


def decode_command(
    latents: Path = typer.Argument(..., help="Latents file (.npy) from `llamavoice generate`."),
    output: str = typer.Option("out.wav", "--output", "-o", help="Output audio file."),
    model: Model = None,
    device: Device = "auto",
) -> None:
    """Step 3 of 3: VAE latents (.npy) → audio file."""
    import numpy as np

    from llamavoice.audio.io import AudioWriter

    with cli_warnings():
        if not latents.is_file():
            raise AudioError(f"latents file not found: {latents}")
        _check_output(output, "output", True, _input_file("latents file", latents))
        try:  # memory-mapped: an hour of latents is decoded window by window, never loaded whole
            z = np.load(latents, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise AudioError(f"{latents} is not a .npy array of latents ({exc}); make one with `llamavoice generate`") \
                from exc
        if not isinstance(z, np.ndarray):
            raise AudioError(f"{latents} is not a .npy array of latents; make one with `llamavoice generate`")
        tts = _load(model, device, "auto")  # the decoder precision `generate` and `synthesize` use
        pieces = tts.decode_stream(z)  # checks shape and values before anything is written
        with AudioWriter(output, tts.sample_rate) as writer:
            for piece in pieces:
                writer.write(piece)
            writer.commit()
        typer.echo(f"wrote {output}: {writer.samples / tts.sample_rate:.2f} s of audio", err=True)


def interactive_command(
    voice: VoiceOption = None,
    model: Model = None,
    output_dir: Path = typer.Option(Path("llamavoice_out"), "--output-dir", "-o", help="Where the WAVs go."),
    seed: Seed = None,
    temperature: Temperature = None,
    cfg_weight: CfgWeight = None,
    speed: Speed = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    threads: Threads = None,
) -> None:
    """Type lines; each is spoken and saved in turn. `exit` (or end of input) quits."""
    from llamavoice.audio import save_audio

    with cli_warnings():
        overrides = _overrides(locals())
        if output_dir.exists() and not output_dir.is_dir():
            raise AudioError(f"--output-dir {output_dir} is a file, not a folder; give a folder for the takes")
        _check_output(output_dir / "001.wav", "--output-dir", True)
        taken = _take_numbers(output_dir)
        tts = _load(model, device, dtype, threads=threads)
        voice_obj = tts.get_voice(voice, seed)
        typer.echo(f"voice {voice_obj.name!r} ready. Type a line and press Enter; 'exit' quits.", err=True)
        count = 0
        number = max(taken, default=0)  # earlier takes in the folder are kept: numbering goes on after them
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
            number += 1
            path = output_dir / f"{number:03d}.wav"
            save_audio(path, audio, sr)
            typer.echo(f"saved {path} ({audio.shape[0] / sr:.2f} s)")
        typer.echo(f"bye: {count} line(s) spoken", err=True)


def _take_numbers(folder: Path) -> list[int]:
    """Numbers of the takes already in an interactive output folder (001.wav, 002.wav, ...)."""
    if not folder.is_dir():
        return []
    return [int(p.stem) for p in folder.glob("*.wav") if p.stem.isdigit()]


def export_onnx_command(model: Model = None) -> None:
    """Export the LM step to ONNX with 8-bit weights (MODEL/onnx/lm_step.onnx): on the CPU, generation
    then runs the step on ONNX Runtime (~2x faster here, docs/performance.md). Needs the onnx extra."""
    import time

    with cli_warnings():
        from llamavoice.inference.api import resolve_model_dir
        from llamavoice.inference.onnx import export_step, lm_fingerprint, step_path
        from llamavoice.models.llamavoice import LlamaVoice

        path = resolve_model_dir(model)
        net = LlamaVoice.from_pretrained(path)
        start = time.perf_counter()
        out = export_step(net, step_path(path), lm_fingerprint(net.lm))
        typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s", err=True)


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx_command)
    app.command("synthesize")(synthesize_command)
    app.command("speak")(speak_command)
    app.command("encode")(encode_command)
    app.command("generate")(generate_command)
    app.command("decode")(decode_command)
    app.command("interactive")(interactive_command)

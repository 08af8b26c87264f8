"""Server commands: ``llamavoice serve`` and ``llamavoice voices``.

FastAPI and uvicorn are imported inside ``serve`` so that the CLI works without the ``server``
extra; ``voices`` only reads the library folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llamavoice.errors import ConfigError


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback should come with --api-key."),
    port: int = typer.Option(8880, help="TCP port."),
    model: Path | None = typer.Option(None, help="Model directory (default: the installed default model)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help="Precision: auto (the fastest measured for the device), fp32, bf16, "
                                           "fp16, int8 or LM,DECODER."),
    threads: int | None = typer.Option(None, help="Torch threads per worker (default: one per core the load "
                                                   "average leaves free, 1 to 4)."),
    voices_dir: Path | None = typer.Option(
        None, help="Voice library folder (default: $LLAMAVOICE_HOME/voices or the user data folder)."),
    api_key: str | None = typer.Option(None, envvar="LLAMAVOICE_API_KEY",
                                       help="Require 'Authorization: Bearer KEY' on /v1 routes."),
    cors_origin: list[str] = typer.Option([], help="Allow browser pages from this origin (repeatable; * for any)."),
    max_batch: int = typer.Option(16, help="Most LM rows decoded together (continuous batching)."),
    max_requests: int = typer.Option(64, help="Most speech requests in flight; more are answered 429."),
    batching: bool = typer.Option(True, help="--no-batching: one request at a time (for comparison)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the OpenAI-compatible speech API and the web page (http://HOST:PORT/)."""
    try:
        import uvicorn

        from llamavoice.server.app import ServerSettings, create_app
    except ImportError as exc:
        raise ConfigError(f"the server needs its extra dependencies ({exc.name} is missing): "
                          'pip install "llamavoice[server]"') from exc
    from llamavoice.inference.api import load
    from llamavoice.inference.commands import cli_warnings

    if max_batch < 1 or max_requests < 1:
        raise ConfigError("--max-batch and --max-requests must be >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach this port can use it",
                   err=True)
    with cli_warnings():
        tts = load(model, device=device, dtype=dtype, threads="auto" if threads is None else threads)
        settings = ServerSettings(voices_dir=voices_dir, api_key=api_key, cors_origins=cor_origins(cors_origin),
                                  batching=batching, max_batch=max_batch, max_requests=max_requests, threads=threads)
        app = create_app(tts, settings)
        typer.echo(f"LlamaVoice on http://{host}:{port}/ (API: /v1/audio/speech)", err=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level)


def cor_origins(values: list[str]) -> list[str]:
    return [v.strip() for v in values if v.strip()]


def voices(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    voices_dir: Path | None = typer.Option(None, help="Voice library folder (default as for `serve`)."),
    model: Path | None = typer.Option(None, help="Also list this model's voices (default: the installed model)."),
) -> None:
    """List the voices the server offers: the model's own and the user library's."""
    from llamavoice.inference.api import DEFAULT_MODEL_DIR
    from llamavoice.inference.voice import VOICES_DIR
    from llamavoice.server.library import VoiceLibrary

    library = VoiceLibrary(voices_dir)
    model_dir = model if model is not None else DEFAULT_MODEL_DIR
    shipped = sorted(p.stem for p in (model_dir / VOICES_DIR).glob("*.safetensors"))
    rows = [{"id": v, "name": v, "source": "model"} for v in shipped]
    rows += [{"id": v.id, "name": v.name, "source": "library", "seconds": v.seconds} for v in library.list()]
    if as_json:
        typer.echo(json.dumps({"library": str(library.root), "voices": rows}, indent=1))
        return
    typer.echo(f"library: {library.root}")
    for row in rows:
        typer.echo(f"{row['id']:24s} {row['source']:8s} {row['name']}")


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(voices)

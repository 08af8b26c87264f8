"""The `llamavoice` console script: one Typer app; each role registers its own commands.

Commands live next to the code they drive (``llamavoice/<role>/commands.py``), each module
exposing ``register(app)``; this file only gathers them and turns LlamaVoiceError into one clear
line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import sys

import typer

from llamavoice.data import commands as data_commands
from llamavoice.errors import LlamaVoiceError
from llamavoice.eval import commands as eval_commands
from llamavoice.inference import commands as inference_commands
from llamavoice.server import commands as server_commands

app = typer.Typer(
    name="llamavoice",
    help="LlamaVoice: continuous-latent text-to-speech.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """LlamaVoice: continuous-latent text-to-speech."""


@app.command()
def info(preset: str = typer.Option("small", help="Config preset to describe: tiny, small or base.")) -> None:
    """Print the parameter count of each part of a preset."""
    from llamavoice.config import preset as get_preset
    from llamavoice.models.llamavoice import LlamaVoice

    sizes = LlamaVoice(get_preset(preset)).num_parameters()
    for name, count in sizes.items():
        typer.echo(f"{name:12s} {count / 1e6:8.2f} M")


for _commands in (data_commands, eval_commands, inference_commands, server_commands):
    _commands.register(app)


def main() -> None:
    """Entry point that reports LlamaVoiceError as one line instead of a traceback."""
    try:
        app()  # standalone mode: usage errors are printed by click with exit code 2
    except LlamaVoiceError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

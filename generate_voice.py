#!/usr/bin/env python
"""Speak a text with LlamaVoice: a thin front end over ``llamavoice synthesize``.

    python generate_voice.py --input_text "Your text here" [--voice clip.wav] [--output out.wav] [--model DIR]

Every option of ``llamavoice synthesize`` works here too (``--help`` lists them).
"""

import typer

from llamavoice.inference.commands import run_app, synthesize_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help=synthesize_command.__doc__)
app.command()(synthesize_command)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()

"""Reading JSONL files line by line with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llamavoice.errors import LlamaVoiceError


def iter_jsonl(
    path: Path, error: type[LlamaVoiceError], where: Callable[[int], str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed value)`` for every non-blank line of a UTF-8 JSONL file.

    ``where(n)`` names line n in messages (default ``"<path> line <n>"``). A line that is not JSON
    raises ``error``; the caller checks the shape of each value and names the line the same way."""
    where = where or (lambda number: f"{path} line {number}")
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where(number)} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            "each line must be one JSON object") from exc
            yield number, value

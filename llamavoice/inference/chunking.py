"""Text → the chunks a model speaks one at a time.

A text (plain or SSML) is checked, split into sentences of at most ``max_chars`` characters and
tokenized; each :class:`Chunk` carries its token ids, its SSML speaking rate and the silences
around it. Everything that can be wrong with a text is found here, before any generation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llamavoice.errors import TextError
from llamavoice.inference.sampling import SamplingConfig

if TYPE_CHECKING:
    from llamavoice.text.tokenizer import TextTokenizer


@dataclass
class Chunk:
    text: str  # the raw sentence chunk
    ids: list[int]
    chars: int  # normalized characters (drives min/max length)
    rate: float = 1.0  # SSML <prosody rate>: multiplies the speed option
    pause_before: float = 0.0  # SSML <break>: seconds of silence before / after the chunk's audio
    pause_after: float = 0.0


def check_text(text: str, cfg: SamplingConfig) -> list:
    """The checks of a text that need no model: a non-empty string within ``max_total_chars``,
    well-formed SSML (if it is markup), rates within range, and mostly in a script an English
    model can speak. Returns its SSML segments (one for plain text)."""
    from llamavoice.text import script_names, ssml, unsupported_letters

    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError("text is empty: give at least one word to speak")
    if len(text) > cfg.max_total_chars:
        raise TextError(
            f"text is {len(text):,} characters, more than max_total_chars={cfg.max_total_chars:,} for one call; "
            "raise the limit (--max-total-chars N, or max_total_chars=N in Python) or split the text"
        )
    segments = ssml.parse(text)
    for seg in segments:
        speed = cfg.speed * seg.rate
        if not 0.25 <= speed <= 4.0:
            raise TextError(f"speed {cfg.speed:g} × SSML prosody rate {seg.rate:g} = {speed:g}, outside 0.25-4; "
                            "use a milder rate or speed")
    spoken = " ".join(seg.text for seg in segments)
    foreign = unsupported_letters(spoken)
    if foreign and 2 * len(foreign) >= sum(c.isalpha() for c in spoken):
        raise TextError(
            f"text {text.strip()[:40]!r} is written in a script this English-only model cannot speak "
            f"({script_names(foreign)}); translate it or write it in Latin letters"
        )
    return segments


def split_text(text: str, cfg: SamplingConfig, tokenizer: TextTokenizer, max_tokens: int) -> list[Chunk]:
    """Split a text (plain or SSML) into chunks of at most ``cfg.max_chars`` characters and
    ``max_tokens`` tokens, each with its token ids, speaking rate and the silences around it."""
    from llamavoice.text import script_names, split_sentences, unsupported_letters

    segments = check_text(text, cfg)
    foreign = unsupported_letters(" ".join(seg.text for seg in segments))
    chunks: list[Chunk] = []
    skipped: list[tuple[str, str]] = []

    def add(piece: str, limit: int, rate: float) -> None:
        try:
            ids = tokenizer.encode(piece)
            chars = len(tokenizer.normalize(piece))
        except TextError as exc:
            skipped.append((piece, str(exc)))
            return
        if len(ids) > max_tokens and limit > 16:
            # Token-hungry text (e.g. scripts the tokenizer saw little of): split finer.
            for sub in split_sentences(piece, max(16, limit // 2)):
                add(sub, max(16, limit // 2), rate)
            return
        chunks.append(Chunk(piece, ids[:max_tokens], chars, rate))

    pending = 0.0  # silence from segments with nothing to say, carried to the next chunk
    for seg in segments:
        first = len(chunks)
        for piece in split_sentences(seg.text, cfg.max_chars):
            add(piece, cfg.max_chars, seg.rate)
        pending += seg.pause_before
        if len(chunks) > first:
            chunks[first].pause_before += pending
            chunks[-1].pause_after += seg.pause_after
            pending = 0.0
        elif chunks:
            chunks[-1].pause_after += pending + seg.pause_after
            pending = 0.0
        else:
            pending += seg.pause_after
    if not chunks:
        if skipped and "script" in skipped[0][1]:
            raise TextError(skipped[0][1])
        preview = text.strip()[:40]
        raise TextError(f"text {preview!r} has no speakable words (only symbols, emoji or punctuation)")
    if pending:
        chunks[-1].pause_after += pending
    # stacklevel 4: split_text ← TTS._chunks ← TTS._jobs ← the TTS method the caller called
    if skipped:
        warnings.warn(f"skipped {len(skipped)} chunk(s) that cannot be spoken, e.g. {skipped[0][0][:40]!r}: "
                      f"{skipped[0][1]}", stacklevel=4)
    elif foreign:
        warnings.warn(f"{len(foreign)} letter(s) in {script_names(foreign)} (e.g. {foreign[:10]!r}) are outside "
                      "what this English-only model can speak and may come out as noise", stacklevel=4)
    return chunks

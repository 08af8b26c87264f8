"""English text → IPA phoneme symbols, the small-data text front end.

A model trained on a few hours of speech learns to read far sooner from phonemes than from
spelling: every symbol is frequent and says how it sounds. We use gruut's English lexicon and its
grapheme-to-phoneme model (MIT licence, installs from PyPI with its data, no system package)
word by word, after our own normalizer has written numbers, dates and abbreviations out as words.
gruut's full sentence pipeline (POS tagging, its own number parsing) is about 15x slower than this
per-word lookup; it would dominate the time to first audio and brings little here.

Symbols: one per phoneme as gruut writes it (primary stress stays attached to its vowel, so
``ˈɑ`` and ``ɑ`` differ), ``_`` between words, and sentence punctuation ``, . ? !`` as its own
symbol, since pauses and intonation follow it. Anything else (quotes, stray symbols) is dropped.
"""

from __future__ import annotations

import re
from functools import lru_cache

from llamavoice.errors import TextError

WORD_BOUNDARY = "_"
PUNCTUATION = {",": ",", ";": ",", ":": ",", "—": ",", "–": ",", ".": ".", "…": ".", "?": "?", "!": "!"}
_TOKENS = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[,;:—–.…?!]")


def phonemizer_version() -> str:
    """What makes the ids: recorded in the saved tokenizer, so a different phonemizer is caught."""
    from importlib.metadata import version

    return f"gruut {version('gruut')}; gruut-lang-en {version('gruut-lang-en')}"


@lru_cache(maxsize=1)
def _settings():
    try:
        from gruut.lang import get_settings
    except ImportError as exc:  # pragma: no cover - gruut is a dependency
        raise TextError("the phoneme front end needs gruut: pip install gruut gruut-lang-en") from exc
    return get_settings("en-us")


@lru_cache(maxsize=200_000)
def word_phonemes(word: str) -> tuple[str, ...]:
    """Phonemes of one lower-case word: the lexicon's first pronunciation, else gruut's guess."""
    settings = _settings()
    found = settings.lookup_phonemes(word)
    if not found:
        found = settings.guess_phonemes(word)
    return tuple(p for p in (found or ()) if p and not p.isspace())


def phonemize(normalized: str) -> list[str]:
    """Normalized text → phoneme symbols, word boundaries and punctuation."""
    symbols: list[str] = []
    for token in _TOKENS.findall(normalized):
        if token in PUNCTUATION:
            mark = PUNCTUATION[token]
            if symbols and symbols[-1] == WORD_BOUNDARY:
                symbols.pop()
            if symbols and symbols[-1] in PUNCTUATION.values():
                symbols[-1] = mark if mark != "," else symbols[-1]  # '?,' stays '?'
            elif symbols:
                symbols.append(mark)
            continue
        phones = word_phonemes(token.lower())
        if not phones:
            continue
        if symbols and symbols[-1] != WORD_BOUNDARY:
            symbols.append(WORD_BOUNDARY)
        symbols.extend(phones)
    return symbols

"""Text front end: normalization (numbers, dates, abbreviations -> words) and byte-level BPE."""

from llamavoice.text.normalize import (
    NORMALIZER_VERSION,
    check_speakable,
    normalize_text,
    script_names,
    split_sentences,
    unsupported_letters,
)
from llamavoice.text.tokenizer import TOKENIZER_FORMAT_VERSION, TextTokenizer

__all__ = [
    "NORMALIZER_VERSION",
    "TOKENIZER_FORMAT_VERSION",
    "TextTokenizer",
    "check_speakable",
    "normalize_text",
    "script_names",
    "split_sentences",
    "unsupported_letters",
]

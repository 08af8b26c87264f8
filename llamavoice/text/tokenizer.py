"""Text tokenizers, saved next to the model and checked on load.

Two front ends (``TextConfig.frontend``):

- ``bpe``: byte-level BPE over the normalized text (any script, no unknown token);
- ``phonemes``: IPA phoneme symbols of the normalized text (:mod:`llamavoice.text.phonemes`), one id
  per symbol from a word-level vocabulary built on the training texts; the small-data default,
  because a model learns to read from phonemes with far less audio.

Byte-level BPE starts from all 256 byte values, so any text (accents, CJK, stray symbols) encodes
without an unknown token and decodes back to exactly the normalized text. There are no special
tokens: the LM has its own learned SEP/BOS vectors.

Token ids are only meaningful together with the normalizer that produced the training text, so a
saved tokenizer records both its file format version and :data:`NORMALIZER_VERSION`, plus a
sha256 of ``tokenizer.json`` so an edited or truncated file is caught instead of silently
producing different ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llamavoice.errors import ConfigError, TokenizerError
from llamavoice.text.normalize import NORMALIZER_VERSION, check_speakable, normalize_text
from llamavoice.text.phonemes import phonemize, phonemizer_version

log = logging.getLogger(__name__)
FRONTENDS = ("bpe", "phonemes")
UNKNOWN_PHONEME = "<unk>"

TOKENIZER_FORMAT_VERSION = "1"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"

_BYTE_ALPHABET_SIZE = 256


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TextTokenizer:
    """Normalizes text and maps it to BPE token ids (and back)."""

    def __init__(self, tokenizer: Tokenizer, frontend: str = "bpe") -> None:
        if frontend not in FRONTENDS:
            raise ConfigError(f"unknown text front end {frontend!r}; choose one of {list(FRONTENDS)}")
        self._tok = tokenizer
        self.frontend = frontend

    # -- building -------------------------------------------------------------------------------

    @staticmethod
    def _empty() -> Tokenizer:
        tok = Tokenizer(models.BPE())
        # No prefix space: decode(encode(x)) must give back x exactly.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, frontend: str = "bpe") -> TextTokenizer:
        """Train on ``texts`` (normalized first) to at most ``vocab_size`` tokens.

        The result can be smaller than ``vocab_size`` when the corpus has too few distinct merges
        (``bpe``) or symbols (``phonemes``); :attr:`vocab_size` reports the real size.
        """
        if frontend == "phonemes":
            return cls._train_phonemes(texts, vocab_size)
        if frontend != "bpe":
            raise ConfigError(f"unknown text front end {frontend!r}; choose one of {list(FRONTENDS)}")
        if vocab_size < _BYTE_ALPHABET_SIZE:
            raise ConfigError(
                f"Tokenizer vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                f"{_BYTE_ALPHABET_SIZE} tokens (one per byte). Set text.vocab_size to 256 or more.")
        seen = 0

        def normalized() -> Iterator[str]:
            nonlocal seen
            for text in texts:
                norm = normalize_text(text)
                if norm:
                    seen += 1
                    yield norm

        tok = cls._empty()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(normalized(), trainer=trainer)
        if seen == 0:
            raise TokenizerError("Cannot train a tokenizer: none of the training texts has any words in "
                                 "it. Check the transcripts in your dataset.")
        return cls(tok)

    @classmethod
    def _train_phonemes(cls, texts: Iterable[str], vocab_size: int) -> TextTokenizer:
        symbols: set[str] = set()
        for text in texts:
            norm = normalize_text(text)
            if norm:
                symbols.update(phonemize(norm))
        if not symbols:
            raise TokenizerError("Cannot build a phoneme vocabulary: none of the training texts has any words "
                                 "in it. Check the transcripts in your dataset.")
        vocab = {UNKNOWN_PHONEME: 0} | {sym: i + 1 for i, sym in enumerate(sorted(symbols))}
        if len(vocab) > vocab_size:
            raise ConfigError(f"the phoneme vocabulary has {len(vocab)} symbols, more than text.vocab_size="
                              f"{vocab_size}; raise text.vocab_size")
        tok = Tokenizer(models.WordLevel(vocab, unk_token=UNKNOWN_PHONEME))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return cls(tok, "phonemes")

    # -- use ------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Actual number of tokens (ids run from 0 to vocab_size - 1)."""
        return self._tok.get_vocab_size()

    def normalize(self, text: str) -> str:
        """The exact text the model sees for ``text`` (what :meth:`decode` gives back)."""
        return check_speakable(text)

    def encode(self, text: str) -> list[int]:
        """Normalize ``text`` and return its token ids. Raises TextError for unspeakable text."""
        normalized = check_speakable(text)
        if self.frontend == "phonemes":
            return self._tok.encode(" ".join(phonemize(normalized))).ids
        return self._tok.encode(normalized).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> normalized text (``bpe``) or space-separated phoneme symbols (``phonemes``)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(
                f"Token id {bad[0]} is outside this tokenizer's vocabulary (0..{self.vocab_size - 1}). "
                "The ids were probably made with a different tokenizer.")
        return self._tok.decode(ids)

    def __repr__(self) -> str:
        return f"TextTokenizer(frontend={self.frontend!r}, vocab_size={self.vocab_size})"

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the ids of a text: vocabulary, front end and the
        versions of the normalizer and phonemizer (keys caches of encoded transcripts)."""
        parts = [self._tok.to_str(), self.frontend, str(NORMALIZER_VERSION)]
        if self.frontend == "phonemes":
            parts.append(phonemizer_version())
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_meta.json`` (versions + checksum) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tok_path = directory / TOKENIZER_FILE
        self._tok.save(str(tok_path))
        meta = {
            "format_version": TOKENIZER_FORMAT_VERSION,
            "normalizer_version": NORMALIZER_VERSION,
            "vocab_size": self.vocab_size,
            "sha256": _sha256(tok_path),
            "frontend": self.frontend,
        }
        if self.frontend == "phonemes":
            meta["phonemizer"] = phonemizer_version()
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> TextTokenizer:
        """Load a tokenizer written by :meth:`save`, refusing files that are corrupt or that were
        written for a different format or text normalizer."""
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"Tokenizer directory {directory} does not exist. Point to the model "
                                 "directory that holds tokenizer.json and tokenizer_meta.json.")
        tok_path, meta_path = directory / TOKENIZER_FILE, directory / META_FILE
        for path in (tok_path, meta_path):
            if not path.is_file():
                raise TokenizerError(f"Tokenizer file {path} is missing. The model directory is incomplete: "
                                     "copy it again or retrain the tokenizer.")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"Tokenizer metadata {meta_path} is not valid JSON ({e}). The file is "
                                 "corrupt: copy the model directory again or retrain it.") from None
        missing = [k for k in ("format_version", "normalizer_version", "vocab_size", "sha256")
                   if not isinstance(meta, dict) or k not in meta]
        if missing:
            raise TokenizerError(f"Tokenizer metadata {meta_path} lacks {', '.join(missing)}. The file is "
                                 "corrupt or was not written by llamavoice: retrain the tokenizer.")

        if str(meta["format_version"]) != TOKENIZER_FORMAT_VERSION:
            raise TokenizerError(
                f"Tokenizer in {directory} has format_version {meta['format_version']!r}, but this "
                f"llamavoice reads format_version {TOKENIZER_FORMAT_VERSION!r}. Use the llamavoice "
                "version that wrote it, or retrain the tokenizer (and model) with this version.")
        if str(meta["normalizer_version"]) != NORMALIZER_VERSION:
            raise TokenizerError(
                f"Tokenizer in {directory} was trained on text from normalizer_version "
                f"{meta['normalizer_version']!r}, but this llamavoice normalizes text with "
                f"normalizer_version {NORMALIZER_VERSION!r}, so token ids would not match what the model "
                "learned. Use the llamavoice version that wrote it, or retrain the tokenizer (and model).")

        actual = _sha256(tok_path)
        if actual != meta["sha256"]:
            raise TokenizerError(
                f"Tokenizer file {tok_path} does not match the checksum in {META_FILE} (it was modified "
                "or is corrupt). Copy the model directory again, or retrain the tokenizer.")
        try:
            tok = Tokenizer.from_file(str(tok_path))
        except Exception as e:  # the tokenizers library raises plain Exception subclasses
            raise TokenizerError(f"Tokenizer file {tok_path} could not be read ({e}). Copy the model "
                                 "directory again, or retrain the tokenizer.") from None
        if tok.get_vocab_size() != meta["vocab_size"]:
            raise TokenizerError(
                f"Tokenizer file {tok_path} has {tok.get_vocab_size()} tokens but its metadata says "
                f"{meta['vocab_size']}. The directory is inconsistent: retrain the tokenizer.")
        frontend = str(meta.get("frontend", "bpe"))  # tokenizers saved before phonemes existed are BPE
        if frontend not in FRONTENDS:
            raise TokenizerError(f"Tokenizer in {directory} uses the text front end {frontend!r}, which this "
                                 f"llamavoice does not know ({list(FRONTENDS)}). Upgrade llamavoice.")
        if frontend == "phonemes" and meta.get("phonemizer") != phonemizer_version():
            # Same symbol inventory; only a few pronunciations may differ, so warn instead of refusing.
            log.warning("tokenizer in %s was built with %s; this environment has %s: some words may be "
                        "pronounced differently", directory, meta.get("phonemizer"), phonemizer_version())
        return cls(tok, frontend)

"""Sentences for the offline corpus: read installed text sources, clean, split, filter, deduplicate.

Sources (all offline):
- Debian ``fortunes`` / ``fortunes-min``: records separated by ``%`` lines under
  /usr/share/games/fortunes. Attributions ("-- Groucho Marx"), code and ASCII art are removed.
- WordNet (Debian ``wordnet-base``): the quoted example sentences inside the glosses of
  data.noun/verb/adj/adv under /usr/share/wordnet.
- A user's plain-text file: paragraphs separated by blank lines (or one sentence per line).

Cleanup is deliberately light: unicode quotes/dashes to ASCII, attribution and label removal,
unbalanced quotes/brackets removed, first letter capitalized, a final period added where a sentence
has no end mark. Numbers, abbreviations and symbols like $ or % stay as written: expanding them is the
model's text normalizer's job, and the corpus is where it learns to.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llamavoice.errors import TextError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
# Fortune files skipped by default: pictures, code, non-English, and topics that are mostly ethnic
# or sexual jokes (even in the "safe" set); a voice corpus does not need them.
FORTUNE_EXCLUDE = ("ascii-art", "art", "perl", "translate-me", "ethnic", "men-women", "drugs")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

MIN_WORDS = 3
MAX_WORDS = 30

# Characters a sentence may contain after cleanup; anything else (slashes, @, #, brackets, tabs,
# non-ASCII) marks code, markup, ASCII art or foreign text, and the sentence is dropped.
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,;:!?'\"()$%&-]+$")
_CODE_CHARS = set("{}[]<>|\\^~_=@#*`/+")
_ATTRIBUTION = re.compile(r"^\s*(--|―|~~|- [A-Z])")
_LABEL = re.compile(r"^(?:[A-Z][A-Za-z.']*(?: [A-Z][A-Za-z.']*){0,2}|Q|A):\s+")
_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
# Abbreviations whose period does not end a sentence.
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "e.g", "i.e", "no", "mt",
           "gen", "col", "lt", "sgt", "capt", "rev", "gov", "sen", "rep", "u.s", "inc", "co", "ltd",
           "jan", "feb", "mar", "apr", "aug", "sept", "sep", "oct", "nov", "dec", "fig", "approx"}


@dataclass(frozen=True)
class Sentence:
    """One cleaned sentence and where it came from (``fortunes:<file>``, ``wordnet``, ``file``)."""

    text: str
    source: str

    @property
    def key(self) -> str:
        return dedup_key(self.text)


# ----------------------------------------------------------------------------------------------
# Character-level cleanup and sentence splitting


def to_ascii(text: str) -> str:
    """Map typographic quotes, dashes and ellipses to ASCII; collapse whitespace."""
    table = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "--",
             "\u2026": "...", "\u00a0": " ", "``": '"', "''": '"'}
    for k, v in table.items():
        text = text.replace(k, v)
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(paragraph: str) -> list[str]:
    """Split at . ! ? (and ...) followed by space and an upper-case letter, digit or quote, except
    after known abbreviations and single initials ("J. R. R. Tolkien")."""
    text = to_ascii(paragraph)
    out: list[str] = []
    start = 0
    for m in re.finditer(r"([.!?]+)([\"')]*)\s+(?=[\"'(]?[A-Z0-9])", text):
        end = m.end(2)
        if m.group(1) == ".":
            prev = re.search(r"([A-Za-z.]+)\.$", text[start:m.start(1) + 1])
            word = prev.group(1).lower() if prev else ""
            if word in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def _balance(s: str) -> str:
    if s.count('"') % 2:
        s = s.replace('"', "")
    if s.count("(") != s.count(")"):
        s = s.replace("(", "").replace(")", "")
    # Quote marks used as single quotes around the whole sentence, not apostrophes.
    s = re.sub(r"^'+|(?<=[.!?,])'+$", "", s).strip()
    return re.sub(r"\s+", " ", s).strip()


def clean_sentence(raw: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> str | None:
    """Return the cleaned sentence, or None if it should not be spoken (odd characters, shouting,
    too short/long, no letters)."""
    s = to_ascii(raw)
    s = _LABEL.sub("", s)                       # "Q: ...", "Moral: ...", "Kirk: ..."
    s = re.sub(r"^\(?\d{1,2}[:.)]\s+", "", s)        # list numbering "5: ...", "(2) ..."
    s = re.sub(r"\s*--+\s*", ", ", s)           # em-dash written as -- reads as a pause
    s = re.sub(r"\s+([,.;:!?])", r"\1", s)
    s = re.sub(r"([,;:])\s*([,;:.!?])", r"\2", s)
    s = re.sub(r":\s*\(?\d{1,2}[.)]?$", ".", s)      # "...do both: 1." (a list starts here)
    s = re.sub(r"^([\"']?)\s*\.\.\.\s*", r"\1", s)      # leading ellipsis of an excerpt
    if re.search(r"\"\s*\"|\(\s*\)|\"[^A-Za-z0-9\"]*\"", s):
        return None                              # dialogue fragments '" "', code calls 'f()', '"?"'

    s = s.strip(" ,;:-")
    s = _balance(s)
    if not s or not _ALLOWED.match(s):
        return None
    words = _WORD.findall(s)
    if not (min_words <= len(words) <= max_words):
        return None
    letters = [c for c in s if c.isalpha()]
    if not letters or sum(c.isupper() for c in letters) > 0.5 * len(letters):
        return None                              # ALL CAPS headlines get spelled out by engines
    if re.search(r"(.)\1{3,}", s) or re.search(r"\.\.\.\.|!!|\?\?", s):
        return None                              # "Ooohhhh", "!!!!": noise, not prose
    if not s[0].isupper() and s[0].isalpha():
        s = s[0].upper() + s[1:]
    if not re.search(r"[.!?][\"')]*$", s):
        s = s.rstrip(",;:") + "."
    return s


def dedup_key(text: str) -> str:
    """Case- and punctuation-insensitive identity of a sentence."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


# ----------------------------------------------------------------------------------------------
# Sources


def fortune_records(text: str) -> list[str]:
    """Split a fortune file into records and strip attributions; returns paragraphs joined by
    blank lines. Records that look like code or drawings are dropped whole."""
    out = []
    for rec in re.split(r"^%\s*$", text, flags=re.M):
        lines = rec.strip("\n").split("\n")
        kept: list[str] = []
        for line in lines:
            if _ATTRIBUTION.match(line):
                break                            # attribution and anything after it
            kept.append(line)
        body = "\n".join(kept).strip()
        if not body:
            continue
        nonspace = [c for c in body if not c.isspace()]
        if sum(c in _CODE_CHARS for c in nonspace) > 0.02 * len(nonspace):
            continue
        nonempty = [ln.strip() for ln in kept if ln.strip()]
        indented = [ln for ln in kept if ln.strip() and re.match(r"^(\t| {4,})", ln)]
        if len(indented) > 0.5 * len(nonempty) and len(nonempty) > 2:
            continue                              # tables, drawings, indented verse
        verse = [ln for ln in nonempty[1:] if ln[0].isupper()]
        if len(nonempty) >= 4 and len(verse) > 0.6 * (len(nonempty) - 1):
            continue                              # verse: every line capitalized, joined it reads oddly
        out.append(body)
    return out


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with inner newlines joined by spaces."""
    return [re.sub(r"\s*\n\s*", " ", p).strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_fortunes(directory: Path = FORTUNE_DIR, exclude: Sequence[str] = FORTUNE_EXCLUDE) -> list[Sentence]:
    """Raw (uncleaned) sentences from every fortune file in ``directory`` not in ``exclude``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TextError(f"fortune directory {directory} not found; apt-get install fortunes fortunes-min "
                        "or pass --no-fortunes")
    out: list[Sentence] = []
    for f in sorted(directory.iterdir()):
        if f.suffix in (".dat", ".u8") or f.is_symlink() or f.is_dir() or f.name in exclude:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        for rec in fortune_records(text):
            for para in paragraphs(rec):
                out += [Sentence(s, f"fortunes:{f.name}") for s in split_sentences(para)]
    return out


def read_wordnet(directory: Path = WORDNET_DIR) -> list[Sentence]:
    """The quoted example sentences in WordNet's glosses (``... | gloss; "example"; "example"``)."""
    directory = Path(directory)
    files = [directory / n for n in WORDNET_FILES if (directory / n).is_file()]
    if not files:
        raise TextError(f"no WordNet data files ({', '.join(WORDNET_FILES)}) in {directory}; "
                        "apt-get install wordnet-base or pass --no-wordnet")
    out: list[Sentence] = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue                      # license header
                gloss = line.split(" | ", 1)[1]
                out += [Sentence(m, "wordnet") for m in re.findall(r'"([^"]+)"', gloss)]
    return out


def read_text_file(path: Path) -> list[Sentence]:
    path = Path(path)
    if not path.is_file():
        raise TextError(f"text file {path} not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if "\n\n" not in text.strip():               # one sentence (or paragraph) per line
        paras = [ln.strip() for ln in text.splitlines() if ln.strip()]
    else:
        paras = paragraphs(text)
    return [Sentence(s, "file") for p in paras for s in split_sentences(p)]


# ----------------------------------------------------------------------------------------------
# Pool building


def has_number(text: str) -> bool:
    return bool(re.search(r"\d", text))


def is_question(text: str) -> bool:
    return bool(re.search(r"\?[\"')]*$", text))


def is_exclamation(text: str) -> bool:
    return bool(re.search(r"![\"')]*$", text))


def is_special(text: str) -> bool:
    """Numbers, questions and exclamations: rarer in the sources, important for the model."""
    return has_number(text) or is_question(text) or is_exclamation(text)


def clean_pool(raw: Iterable[Sentence], min_words: int = MIN_WORDS,
               max_words: int = MAX_WORDS) -> tuple[list[Sentence], dict]:
    """Clean, filter and deduplicate; the result is sorted by dedup key so it does not depend on
    file order. Returns the pool and counts of what was dropped and why."""
    seen: dict[str, Sentence] = {}
    n_raw = n_bad = n_dup = 0
    for s in raw:
        n_raw += 1
        c = clean_sentence(s.text, min_words, max_words)
        if c is None:
            n_bad += 1
            continue
        k = dedup_key(c)
        if k in seen:
            n_dup += 1
            continue
        seen[k] = Sentence(c, s.source)
    pool = [seen[k] for k in sorted(seen)]
    return pool, {"raw": n_raw, "dropped_by_filter": n_bad, "duplicates": n_dup, "kept": len(pool)}


def _stable_uniform(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return (int.from_bytes(h[:8], "little") + 0.5) / 2.0**64


def ordered_pool(pool: Sequence[Sentence], seed: int, special_boost: float = 2.0) -> list[Sentence]:
    """A seeded shuffle in which numbers, questions and exclamations come ``special_boost`` times
    as early on average (weighted random order, keys u**(1/w)), so a corpus that uses only part of
    the pool still contains plenty of them. Depends only on the set of sentences and the seed."""
    def key(s: Sentence) -> float:
        w = special_boost if is_special(s.text) else 1.0
        return _stable_uniform(seed, s.key) ** (1.0 / w)

    return sorted(pool, key=key, reverse=True)


def split_heldout(pool: Sequence[Sentence], n_heldout: int, seed: int,
                  min_share: float = 0.1) -> tuple[list[Sentence], list[Sentence]]:
    """Take ``n_heldout`` sentences out of the pool (seeded, by key), returning (train, heldout).
    At least ``min_share`` of the held-out set has numbers, as many are questions and as many
    exclamations (where the pool has them), so evaluations cover them. Held-out sentences never
    appear in training."""
    if n_heldout >= len(pool):
        raise TextError(f"asked for {n_heldout} held-out sentences but the pool has only {len(pool)}")
    ranked = sorted(pool, key=lambda s: _stable_uniform(seed + 7919, s.key))
    quota = int(round(min_share * n_heldout))
    chosen: dict[str, Sentence] = {}
    for test in (has_number, is_question, is_exclamation):
        have = sum(test(s.text) for s in chosen.values())
        for s in ranked:
            if have >= quota:
                break
            if s.key not in chosen and test(s.text):
                chosen[s.key] = s
                have += 1
    for s in ranked:
        if len(chosen) >= n_heldout:
            break
        chosen.setdefault(s.key, s)
    heldout = sorted(chosen.values(), key=lambda s: _stable_uniform(seed + 7919, s.key))[:n_heldout]
    held = {s.key for s in heldout}
    train = [s for s in pool if s.key not in held]
    return train, heldout


def text_counts(sentences: Sequence[Sentence]) -> dict:
    """Counts the report needs: totals by source, numbers, questions, exclamations, word lengths."""
    words = [len(_WORD.findall(s.text)) for s in sentences]
    by_source: dict[str, int] = {}
    for s in sentences:
        src = s.source.split(":")[0]
        by_source[src] = by_source.get(src, 0) + 1
    return {
        "sentences": len(sentences),
        "with_numbers": sum(has_number(s.text) for s in sentences),
        "questions": sum(is_question(s.text) for s in sentences),
        "exclamations": sum(is_exclamation(s.text) for s in sentences),
        "by_source": dict(sorted(by_source.items())),
        "words_mean": round(sum(words) / max(1, len(words)), 2),
        "words_min": min(words, default=0),
        "words_max": max(words, default=0),
    }


def build_pool(use_fortunes: bool = True, use_wordnet: bool = True, text_files: Sequence[Path] = (),
               fortune_dir: Path = FORTUNE_DIR, wordnet_dir: Path = WORDNET_DIR,
               fortune_exclude: Sequence[str] = FORTUNE_EXCLUDE, min_words: int = MIN_WORDS,
               max_words: int = MAX_WORDS) -> tuple[list[Sentence], dict]:
    """Read the chosen sources and return the cleaned, deduplicated pool and a report."""
    raw: list[Sentence] = []
    if use_fortunes:
        raw += read_fortunes(fortune_dir, fortune_exclude)
    if use_wordnet:
        raw += read_wordnet(wordnet_dir)
    for f in text_files:
        raw += read_text_file(Path(f))
    if not raw:
        raise TextError("no text source selected: use fortunes, WordNet or --text-file")
    pool, report = clean_pool(raw, min_words, max_words)
    if not pool:
        raise TextError("no sentence survived cleaning; check the text sources")
    return pool, report

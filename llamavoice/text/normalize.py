"""English text normalization: raw text -> words a speech model can say.

The model only ever sees the output of :func:`normalize_text`, both when training and when speaking,
so any change to its output changes token ids and must bump :data:`NORMALIZER_VERSION` (saved
tokenizers record it and refuse to load against a different normalizer).

Sentence punctuation (``. , ? ! ; :``) is kept on purpose: it carries prosody (pauses, questions).
Number words come from ``num2words`` and are rewritten to the plain American style without "and"
or commas ("one thousand two hundred thirty-four"), because a comma inside a number would read as
a pause.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from llamavoice.errors import TextError

NORMALIZER_VERSION = "1"

DEFAULT_MAX_CHARS = 100_000

# ---------------------------------------------------------------------------------------------
# number words
# ---------------------------------------------------------------------------------------------

_DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Beyond this num2words' words stop being something anyone says; such strings are IDs, read digits.
_MAX_CARDINAL = 10**15


def _clean_words(words: str) -> str:
    """num2words says 'one thousand, two hundred and thirty-four'; drop the comma and 'and'."""
    words = words.replace(",", "")
    words = re.sub(r"\band\b", " ", words)
    words = words.replace("oh-", "oh ")  # year 1905 -> 'nineteen oh five'
    return re.sub(r"\s+", " ", words).strip()


def _digits(s: str) -> str:
    return " ".join(_DIGIT_WORDS[int(c)] for c in s if c.isdigit())


def _cardinal(s: str) -> str:
    """Integer string (may carry thousands commas) -> words; long digit strings read digit by digit."""
    s = s.replace(",", "")
    if len(s) > 1 and s.startswith("0"):
        return _digits(s)  # '007', zip codes, IDs
    value = int(s)
    if value >= _MAX_CARDINAL:
        return _digits(s)
    return _clean_words(num2words(value))


def _ordinal(value: int) -> str:
    return _clean_words(num2words(value, to="ordinal"))


def _year(value: int) -> str:
    return _clean_words(num2words(value, to="year"))


def _decimal(int_part: str, frac_part: str) -> str:
    """'3', '14' -> 'three point one four' (digits after the point are read one by one)."""
    head = _cardinal(int_part) if int_part else "zero"
    return f"{head} point {_digits(frac_part)}"


def _number(s: str) -> str:
    """Integer or decimal string -> words."""
    if "." in s:
        i, f = s.split(".", 1)
        return _decimal(i, f)
    return _cardinal(s)


_PAD = "\x00"  # control chars are stripped before any replacement, so this marker is unambiguous


def _pad(words: str) -> str:
    # Replacements are marked at both ends; at the end a marker between two word characters
    # becomes a space ('5kg' -> 'five kg') and any other marker vanishes ('(5)' -> '(five)').
    return f"{_PAD}{words}{_PAD}"


# ---------------------------------------------------------------------------------------------
# unicode cleanup
# ---------------------------------------------------------------------------------------------

_CHAR_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2212": "-",
    "\u2044": "/",  # fraction slash: NFKC turns '½' into '1⁄2'
    "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\u3000": " ",
    "\t": " ", "\r": "\n",
}
_CHAR_TABLE = str.maketrans(_CHAR_MAP)


def _unicode_cleanup(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_CHAR_TABLE)
    # En dash between numbers is a range; other en/em dashes and bars are a pause.
    text = re.sub(r"(?<=\d)\s*\u2013\s*(?=\d)", " to ", text)
    text = re.sub(r"\s*[\u2013\u2014\u2015]+\s*", ", ", text)
    text = re.sub(r"\u2026", "...", text)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "\n" or ch == " ":
            out.append(ch)
        elif ch in "*_|\\~^`":
            out.append(" ")  # markup characters (markdown emphasis, tables) are not read aloud
        elif cat[0] in "LMNPZ" or cat in ("Sm", "Sc") or ch == "°":
            out.append(ch)
        else:
            # Emoji, pictographs, control and format chars (ZWJ, variation selectors): unspeakable.
            out.append(" ")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# abbreviations
# ---------------------------------------------------------------------------------------------

# Titles are only expanded when a name follows, so 'Dr' alone at the end stays as written.
_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor",
           "Gen": "General", "Capt": "Captain", "Sgt": "Sergeant", "Rev": "Reverend"}
_SUFFIXES = {"Jr": "Junior", "Sr": "Senior"}


def _expand_abbreviations(text: str) -> str:
    for abbr, word in _TITLES.items():
        text = re.sub(rf"\b{abbr}\.", word, text)
        if abbr in ("Dr", "Mr", "Mrs", "Ms"):  # British style 'Dr Smith' has no full stop
            text = re.sub(rf"\b{abbr}(?=\s+[A-Z])", word, text)
    for abbr, word in _SUFFIXES.items():
        text = re.sub(rf"(?<=[A-Za-z],)\s*{abbr}\.", f" {word}", text)
        text = re.sub(rf"(?<=[A-Za-z])\s+{abbr}\.", f" {word}", text)
    # 'St. Louis' is a saint, 'Main St.' a street.
    text = re.sub(r"\bSt\.(?=\s+[A-Z])", "Saint", text)
    text = re.sub(r"\bSt\.", "Street", text)
    text = re.sub(r"\b[Nn]o\.\s*(?=\d)", "number ", text)
    text = re.sub(r"#\s*(?=\d)", "number ", text)
    text = re.sub(r"\bvs\.?(?=\s)", "versus", text, flags=re.IGNORECASE)
    text = re.sub(r"\be\.\s?g\.", "for example", text, flags=re.IGNORECASE)
    text = re.sub(r"\bi\.\s?e\.", "that is", text, flags=re.IGNORECASE)
    # 'etc.' often ends a sentence: keep its full stop when one is due.
    text = re.sub(r"\betc\.(?=\s+[A-Z]|\s*$)", "et cetera.", text)
    text = re.sub(r"\betc\.", "et cetera", text)
    text = re.sub(r"\bapprox\.", "approximately", text)
    return text


# ---------------------------------------------------------------------------------------------
# dates and times
# ---------------------------------------------------------------------------------------------

_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_MONTH_ABBR = {m[:3].lower(): i + 1 for i, m in enumerate(_MONTHS)}
_MONTH_RE = (r"(?P<month>January|February|March|April|May|June|July|August|September|October|November|"
             r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?")


def _month_number(name: str) -> int:
    return _MONTH_ABBR[name.lower()[:3]]  # the first three letters tell every month apart


def _say_date(month: int, day: int, year: int | None) -> str:
    words = f"{_MONTHS[month - 1]} {_ordinal(day)}"
    if year is not None:
        words += f", {_year(year)}"
    return words


def _iso_date(m: re.Match) -> str:
    y, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
    if not (1 <= mo <= 12 and 1 <= d <= 31):
        return m.group(0)
    return _pad(_say_date(mo, d, y))


def _slash_date(m: re.Match) -> str:
    """Numeric dates are read as US month/day/year; if the first part can't be a month
    (e.g. 25/12/2024) it is read as day/month/year instead."""
    a, b, y = int(m["a"]), int(m["b"]), m["y"]
    year = int(y) if len(y) == 4 else 2000 + int(y)
    if 1 <= a <= 12 and 1 <= b <= 31:
        return _pad(_say_date(a, b, year))
    if 1 <= b <= 12 and 1 <= a <= 31:
        return _pad(_say_date(b, a, year))
    return m.group(0)


def _month_day(m: re.Match) -> str:
    day = int(m["day"])
    if not 1 <= day <= 31:
        return m.group(0)
    year = int(m["year"]) if m["year"] else None
    return _pad(_say_date(_month_number(m["month"]), day, year))


def _day_month(m: re.Match) -> str:
    day = int(m["day"])
    if not 1 <= day <= 31:
        return m.group(0)
    # 'the 3rd of March' already has its article.
    article = "" if re.search(r"\bthe\s*$", m.string[:m.start()], re.IGNORECASE) else "the "
    words = f"{article}{_ordinal(day)} of {_MONTHS[_month_number(m['month']) - 1]}"
    if m["year"]:
        words += f", {_year(int(m['year']))}"
    return _pad(words)


def _time(m: re.Match) -> str:
    h = int(m["h"])
    mins = int(m["min"]) if m["min"] else 0
    secs = m["s"]
    ampm = m["ampm"]
    if h > 24 or mins > 59:
        return m.group(0)
    hour = _cardinal(str(h))
    if mins == 0:
        words = hour if ampm else (f"{hour} o'clock" if h <= 12 else f"{hour} hundred")
    elif mins < 10:
        words = f"{hour} oh {_cardinal(str(mins))}"
    else:
        words = f"{hour} {_cardinal(str(mins))}"
    if secs and int(secs) > 0:
        words += f" and {_cardinal(str(int(secs)))} seconds"
    if ampm:
        words += " " + " ".join(c for c in ampm.lower() if c.isalpha())
    return _pad(words)


# ---------------------------------------------------------------------------------------------
# money, percent, fractions, plain numbers
# ---------------------------------------------------------------------------------------------

_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"),
               "£": ("pound", "pounds", "penny", "pence"),
               "€": ("euro", "euros", "cent", "cents"),
               "¥": ("yen", "yen", "", "")}
_SCALES = r"(?:thousand|million|billion|trillion)"
_NUM = r"\d{1,3}(?:,\d{3})+|\d+"


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["cur"]]
    whole, frac, scale = m["whole"], m["frac"], m["scale"]
    if scale:  # '$1.5 million' -> 'one point five million dollars'
        amount = _decimal(whole, frac) if frac else _cardinal(whole)
        return _pad(f"{amount} {scale} {many}")
    units = int(whole.replace(",", ""))
    words = f"{_cardinal(whole)} {one if units == 1 else many}"
    if frac and sub_one:
        cents = int((frac + "0")[:2])
        if cents:
            cents_words = f"{_cardinal(str(cents))} {sub_one if cents == 1 else sub_many}"
            words = cents_words if units == 0 else f"{words} and {cents_words}"
    elif frac:
        words = f"{_decimal(whole, frac)} {many}"
    return _pad(words)


_FRACTION_NAMES = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _fraction(m: re.Match) -> str:
    num, den = int(m["num"]), int(m["den"])
    if den == 0:
        return _pad(f"{_cardinal(m['num'])} over zero")
    if den == 1 or den > 100:
        return _pad(f"{_cardinal(m['num'])} over {_cardinal(m['den'])}")
    one, many = _FRACTION_NAMES.get(den, (_ordinal(den), _ordinal(den) + "s"))
    return _pad(f"{_cardinal(m['num'])} {one if num == 1 else many}")


def _is_year(value: int) -> bool:
    return 1100 <= value <= 2099


_YEAR_CONTEXT = re.compile(
    r"(?:\b(?:in|since|by|from|until|till|to|of|circa|year|around|before|after|during|early|late|"
    r"mid|summer|winter|spring|autumn|fall)\s+)$", re.IGNORECASE)


def _range(m: re.Match) -> str:
    a, b = m["a"], m["b"]
    small = len(a) <= 3 and len(b) <= 3
    years = _is_year(int(a)) and _is_year(int(b)) and len(a) == len(b) == 4
    if m.group(0).count("-") == 1 and int(b) > int(a) and (small or years):
        say = _year if len(a) == 4 else (lambda v: _cardinal(str(v)))
        return _pad(f"{say(int(a))} to {say(int(b))}")
    # Phone numbers, part numbers: read each group as digits, with a pause between groups.
    return _pad(", ".join(_digits(g) for g in m.group(0).split("-")))


def _plain_number(m: re.Match, text: str) -> str:
    s = m.group(0)
    if re.fullmatch(r"\d{4}", s):
        value = int(s)
        # A bare 4-digit number is a year when it is in year range and either has a word like
        # 'in'/'since' before it, or is a plausible modern year (1800-2099). So 'in 1492' and
        # '1999' are years, while '1234' is a count.
        before = text[max(0, m.start() - 20):m.start()]
        after = text[m.end():m.end() + 4]
        if _is_year(value) and (_YEAR_CONTEXT.search(before) or 1800 <= value
                                or re.match(r"\s*(?:AD|BC|BCE|CE)\b", after)):
            return _pad(_year(value))
    return _pad(_number(s))


def _percent(m: re.Match) -> str:
    n = m["n"].replace(",", "")
    return _pad(f"{_decimal(n, m['f']) if m['f'] else _cardinal(n)} percent")


def _decade(m: re.Match) -> str:
    """'1990s' -> 'nineteen nineties', '80s' -> 'eighties'."""
    s = m["n"]
    value = int(s)
    if len(s) == 4 and _is_year(value) and value % 10 == 0:
        words = _year(value)
    elif len(s) == 2 and value % 10 == 0 and value >= 10:
        words = _cardinal(s)
    else:
        return m.group(0)
    words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    return _pad(words)


def _numbers(text: str) -> str:
    # Money before percent/decimals so '$3.50' is not read as a decimal.
    text = re.sub(
        rf"(?P<cur>[$£€¥])\s?(?P<whole>{_NUM})(?:\.(?P<frac>\d+))?(?:\s+(?P<scale>{_SCALES})\b)?",
        _money, text)
    text = re.sub(rf"(?P<whole>{_NUM})(?:\.(?P<frac>\d+))?\s?(?P<cur>[$£€¥])(?P<scale>)", _money, text)
    text = re.sub(rf"(?<![\d.])(?P<n>{_NUM})(?:\.(?P<f>\d+))?\s?%", _percent, text)
    text = re.sub(r"(?<![\d.])'?(?P<n>\d{2}|\d{4})'?s\b", _decade, text)
    text = re.sub(r"\b(?P<n>\d+)(?:st|nd|rd|th)\b", lambda m: _pad(_ordinal(int(m["n"]))), text,
                  flags=re.IGNORECASE)
    text = re.sub(r"(?<![\d/])(?P<num>\d{1,3})/(?P<den>\d{1,3})(?![\d/])", _fraction, text)
    text = re.sub(r"(?<![\d.,-])(?P<a>\d+)-(?P<b>\d+)(?:-\d+)*(?![\d.])", _range, text)
    # Negative numbers: a minus sign not glued to a word or digit before it.
    text = re.sub(rf"(?<![\w.])-(?=(?:{_NUM})(?:\.\d+)?\b)", " minus ", text)
    text = re.sub(rf"(?<![\d.])(?P<i>{_NUM})\.(?P<f>\d+)\b",
                  lambda m: _pad(_decimal(m["i"], m["f"])), text)
    text = re.sub(r"(?<![\w.])\.(?P<f>\d+)\b", lambda m: _pad(f"point {_digits(m['f'])}"), text)
    text = re.sub(_NUM, lambda m: _plain_number(m, text), text)
    return text


_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "%": " percent ",
            "×": " times ", "°": " degrees "}


def _symbols(text: str) -> str:
    for sym, word in _SYMBOLS.items():
        text = text.replace(sym, word)
    # Other math/currency symbols left over have no agreed reading; drop them.
    return "".join(" " if unicodedata.category(c) in ("Sm", "Sc") else c for c in text)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Turn raw English text into speakable words, keeping sentence punctuation.

    Numbers, years, decimals, ordinals, money, percentages, dates (ISO, 'March 5, 2024',
    '5 March 2024' and numeric m/d/y — US order, falling back to d/m/y when the first part
    cannot be a month), times, common abbreviations and symbols are written out as words.
    Unicode is NFKC-normalized, curly quotes and dashes are made plain, emoji and control
    characters are removed and whitespace is collapsed to single spaces.
    """
    text = _unicode_cleanup(text)
    text = _expand_abbreviations(text)

    text = re.sub(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?!\d)", _iso_date, text)
    text = re.sub(r"(?<![\d/])(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4}|\d{2})(?![\d/])", _slash_date, text)
    year = r"(?:,?\s+(?P<year>\d{4})\b)?"
    text = re.sub(rf"\b{_MONTH_RE}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b{year}", _month_day, text)
    text = re.sub(rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}{year}", _day_month, text)
    # 'a.m.' keeps its final full stop unless the sentence clearly goes on after it.
    ampm = r"(?:\s*(?P<ampm>[ap]\.?\s?m(?:\.(?=\s+[a-z]|,))?)(?![a-z]))"
    text = re.sub(rf"\b(?P<h>\d{{1,2}}):(?P<min>\d{{2}})(?::(?P<s>\d{{2}}))?{ampm}?", _time, text,
                  flags=re.IGNORECASE)
    text = re.sub(rf"\b(?P<h>\d{{1,2}})(?P<min>)(?P<s>){ampm}", _time, text, flags=re.IGNORECASE)

    text = _numbers(text)
    text = _symbols(text)

    text = re.sub(rf"(?<=\w){_PAD}+(?=\w)", " ", text).replace(_PAD, "")
    # Collapse whitespace (paragraph breaks included) and tidy spacing around punctuation.
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" - ", ", ", text)  # a spaced hyphen is a dash: pause
    text = re.sub(r"(?<=\w)- | -(?=\w)", " ", text)  # 'COVID-19' -> 'COVID- nineteen' -> 'COVID nineteen'
    text = re.sub(r"\s+([.,?!;:])", r"\1", text)
    text = re.sub(r",([.?!;:])", r"\1", text)
    text = re.sub(r",(\s*,)+", ",", text)
    text = re.sub(r"^[\s,;:]+", "", text)
    return text.strip()


def check_speakable(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Normalize ``text`` and make sure something speakable is left.

    Raises :class:`~llamavoice.errors.TextError` for non-strings, empty text, text with no letters
    after normalization (only emoji or symbols) and text longer than ``max_chars``.
    """
    if not isinstance(text, str):
        raise TextError(f"Text must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise TextError("Text is empty: give at least one word to speak.")
    if len(text) > max_chars:
        raise TextError(
            f"Text is {len(text):,} characters, more than the limit of {max_chars:,}. "
            "Split it into smaller pieces, or pass it as a text file so it is spoken chunk by chunk.")
    normalized = normalize_text(text)
    if not any(c.isalpha() for c in normalized):
        preview = text.strip()[:40]
        raise TextError(
            f"Text {preview!r} has no speakable words after normalization (only symbols, emoji or "
            "punctuation). Give text that contains words or numbers.")
    return normalized


# ---------------------------------------------------------------------------------------------
# sentence splitting
# ---------------------------------------------------------------------------------------------

# Words whose trailing period is not a sentence end.
_NO_SPLIT_AFTER = {"dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "gen", "capt", "sgt",
                   "rev", "e.g", "i.e", "approx", "mt", "ft"}
_CLOSERS = "\"'”’»)]}」』）】"
# Sentence ends: ASCII terminators need whitespace after them (so '3.14' and 'e.g.' survive);
# CJK/full-width and other scripts' terminators end a sentence wherever they are.
_SENT_END = re.compile(
    rf"[.!?…]+[{re.escape(_CLOSERS)}]*(?=\s|$)|[。！？｡．؟।॥۔]+[{re.escape(_CLOSERS)}]*")
_CLAUSE = re.compile(r"[,;:、，；：—–]")


def _sentence_spans(text: str) -> list[str]:
    pieces: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        if m.group(0) == ".":
            word = re.search(r"([\w.]+)$", text[start:m.start()])
            word = word.group(1).lower() if word else ""
            if word in _NO_SPLIT_AFTER or (word == "no" and re.match(r"\s*\d", text[m.end():])):
                continue
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence longer than max_chars at the last clause mark, else space, else hard."""
    out = []
    rest = sentence.strip()
    while len(rest) > max_chars:
        # A clause mark is the nicest cut, but not one so early that it leaves a scrap.
        cut = max((m.end() for m in _CLAUSE.finditer(rest, 0, max_chars)), default=0)
        if cut < max_chars // 3:
            cut = rest.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        head, rest = rest[:cut].strip(), rest[cut:].strip()
        if head:
            out.append(head)
    if rest:
        out.append(rest)
    return out


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Split text into sentence chunks of at most ``max_chars`` characters, one sentence per chunk.

    Splits at sentence ends (``. ! ?`` followed by space, and ``。！？`` etc. anywhere) and at blank
    lines; over-long sentences are cut at clause punctuation, else at whitespace, else hard.
    Chunks with no letters or digits (a stray '...') are glued to the chunk before them when they
    fit, otherwise dropped, so every chunk returned has something to say.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    chunks: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        for sentence in _sentence_spans(paragraph):
            sentence = sentence.strip()
            if not sentence:
                continue
            for piece in _split_long(sentence, max_chars):
                if any(c.isalnum() for c in piece):
                    chunks.append(piece)
                elif chunks and len(chunks[-1]) + 1 + len(piece) <= max_chars:
                    chunks[-1] += " " + piece
    return chunks

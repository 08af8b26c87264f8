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

import datetime
import re
import unicodedata

from num2words import num2words

from llamavoice.errors import TextError

NORMALIZER_VERSION = "1"
# Not bumped for the fixes of issue #14 (terminal escape sequences, URLs, e-mail addresses,
# exponents and scientific notation, impossible times and dates): they change the output only for
# inputs that were mis-read before ('10^50' was "ten fifty", '\x1b[31m' "thirty-one m"), which no
# training transcript relies on, so tokenizers saved under version 1 stay valid.

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


# Terminal control sequences (colours, cursor moves, window titles) are instructions to a
# terminal, not text: CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), DCS/SOS/PM/APC strings,
# character-set designations (ESC ( B) and two-character escapes; also the 8-bit CSI.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x9b[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[ -/]+[0-~]?|\x1b[0-~]?")

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹⁻"
_SUPER_TABLE = str.maketrans(_SUPERSCRIPTS, "0123456789-")


def _superscripts(text: str) -> str:
    """Before NFKC folds them into plain digits ('10⁵' would become '105'): superscripts after a
    number are an exponent, '²'/'³' after a letter are 'squared'/'cubed' (m²), any other run after
    a letter is a footnote mark and is dropped."""

    def after_digit(m: re.Match) -> str:
        return "^" + m.group(1).translate(_SUPER_TABLE)

    def after_letter(m: re.Match) -> str:
        return {"²": " squared", "³": " cubed"}.get(m.group(1), "")

    text = re.sub(rf"(?<=[\d)])([{_SUPERSCRIPTS}]+)", after_digit, text)
    return re.sub(rf"(?<=[^\W\d_])([{_SUPERSCRIPTS}]+)", after_letter, text)


def _unicode_cleanup(text: str) -> str:
    text = _ESCAPES.sub("", text)
    text = _superscripts(text)
    text = unicodedata.normalize("NFKC", text).translate(_CHAR_TABLE)
    text = text.replace(_PAD, " ")  # from here on, _PAD only marks our own replacements
    # Before '_', '~', '^' and '*' are dropped as markup below.
    text = _urls_and_emails(text)
    text = _exponents(text)
    # En dash between numbers is a range; other en/em dashes and bars are a pause.
    text = re.sub(r"(?<=\d)\s*\u2013\s*(?=\d)", " to ", text)
    text = re.sub(r"\s*[\u2013\u2014\u2015]+\s*", ", ", text)
    text = re.sub(r"\u2026", "...", text)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "\n" or ch == " " or ch == _PAD:
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
# URLs, e-mail addresses, exponents
# ---------------------------------------------------------------------------------------------

# A bare 'name.tld' (no scheme, no www) is an address only for these lower-case endings: country
# codes such as 'in', 'it', 'me' are also words, and 'end.It' is a missing space, not a domain.
_TLDS = "com|org|net|edu|gov|io|ai|dev|app|info|biz|xyz|uk"
_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
_URL = re.compile(
    rf"\b(?:(?i:https?|ftp)://(?P<host>{_HOST}|localhost)|(?P<www>(?i:www)\.{_HOST})"
    rf"|(?P<bare>(?:[A-Za-z0-9-]+\.)+(?:{_TLDS}))(?=[/\s.,;:!?)\]'\"]|$))"
    r"(?::(?P<port>\d{1,5}))?(?P<path>/[^\s<>\"]*)?")
_EMAIL = re.compile(rf"(?<![\w.+-])(?P<user>[A-Za-z0-9][A-Za-z0-9._%+-]*)@(?P<host>{_HOST})")
_PART_WORDS = {".": "dot", "-": "dash", "_": "underscore", "+": "plus", "~": "tilde", "%": "percent",
               "/": "slash", "=": "equals", "&": "and", ":": "colon", "@": "at"}


def _say_part(part: str) -> str:
    """A piece of an address, said the way people read one aloud: punctuation by name, digits
    one by one, a word as a word, and a short vowel-less label ('www', 'uk') letter by letter."""
    words = []
    for token in re.findall(r"[A-Za-z]+|\d|[^A-Za-z\d]", part):
        if token.isdigit():
            words.append(_DIGIT_WORDS[int(token)])
        elif token.isalpha():
            spell = len(token) <= 2 or not re.search(r"[aeiouyAEIOUY]", token)
            words.append(" ".join(token) if spell and len(token) <= 4 else token)
        elif token in _PART_WORDS:
            words.append(_PART_WORDS[token])
    return " ".join(words)


def _url(m: re.Match) -> str:
    host = m["host"] or m["www"] or m["bare"]
    path = (m["path"] or "").split("?", 1)[0].split("#", 1)[0]  # query strings are not read aloud
    trail = re.search(r"[.,;:!?)\]'\"]+$", path)  # sentence punctuation after the address
    tail = trail.group(0) if trail else ""
    path = path[: len(path) - len(tail)].rstrip("/")
    words = _say_part(host)
    if m["port"]:
        words += " colon " + _say_part(m["port"])
    if path:
        words += " " + _say_part(path)
    return _pad(words) + tail


def _email(m: re.Match) -> str:
    return _pad(f"{_say_part(m['user'])} at {_say_part(m['host'])}")


def _urls_and_emails(text: str) -> str:
    text = _EMAIL.sub(_email, text)
    return _URL.sub(_url, text)


def _power(exponent: str, named: bool = True) -> str:
    sign, digits = ("minus ", exponent[1:]) if exponent[0] in "-−" else ("", exponent.lstrip("+"))
    if named and not sign and digits in ("2", "3"):
        return "squared" if digits == "2" else "cubed"
    return f"to the power of {sign}{_number(digits)}"


def _exponents(text: str) -> str:
    """'10^50' and '2**10' -> 'ten to the power of fifty'; '6.02e23' -> 'six point zero two times
    ten to the power of twenty-three'; 'x^2' -> 'x squared'."""
    exp = r"(?P<exp>[+\-−]?\d{1,4})(?![\d.])"
    text = re.sub(rf"(?<![\w.])(?P<base>\d+(?:\.\d+)?)\s*(?:\^|\*\*)\s*{exp}",
                  lambda m: _pad(f"{_number(m['base'])} {_power(m['exp'])}"), text)
    text = re.sub(rf"(?<![\w.])(?P<base>[A-Za-z])\s*(?:\^|\*\*)\s*{exp}",
                  lambda m: _pad(f"{m['base']} {_power(m['exp'])}"), text)
    return re.sub(r"(?<![\w.])(?P<m>\d+(?:\.\d+)?)[eE](?P<exp>[+\-]?\d{1,3})(?![\w.])",
                  lambda m: _pad(f"{_number(m['m'])} times ten {_power(m['exp'], named=False)}"), text)


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


def _valid_date(year: int | None, month: int, day: int) -> bool:
    """A real calendar day (2024-02-30 is not); without a year, 29 February counts."""
    try:
        datetime.date(2000 if year is None else year, month, day)
    except ValueError:
        return False
    return True


def _iso_date(m: re.Match) -> str:
    y, mo, d = int(m["y"]), int(m["m"]), int(m["d"])
    if not _valid_date(y, mo, d):
        return m.group(0)  # not a date: read as digit groups, like a part number
    return _pad(_say_date(mo, d, y))


def _slash_date(m: re.Match) -> str:
    """Numeric dates are read as US month/day/year; if the first part can't be a month
    (e.g. 25/12/2024) it is read as day/month/year instead."""
    a, b, y = int(m["a"]), int(m["b"]), m["y"]
    year = int(y) if len(y) == 4 else 2000 + int(y)
    if _valid_date(year, a, b):
        return _pad(_say_date(a, b, year))
    if _valid_date(year, b, a):
        return _pad(_say_date(b, a, year))
    return _pad(" slash ".join(_cardinal(x) for x in (m["a"], m["b"], y)))


def _month_day(m: re.Match) -> str:
    day = int(m["day"])
    year = int(m["year"]) if m["year"] else None
    if not _valid_date(year, _month_number(m["month"]), day):
        return m.group(0)
    return _pad(_say_date(_month_number(m["month"]), day, year))


def _day_month(m: re.Match) -> str:
    day = int(m["day"])
    if not _valid_date(int(m["year"]) if m["year"] else None, _month_number(m["month"]), day):
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
    if h > 24 or mins > 59 or (secs and int(secs) > 59):
        # Not a clock time ('25:61'): a ratio or a score, 'twenty-five to sixty-one'.
        if not m["min"]:
            return m.group(0)
        return _pad(f"{_cardinal(m['h'])} to {_cardinal(m['min'])}" + (f" to {_cardinal(secs)}" if secs else ""))
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
    # Two numbers around a colon that are not a clock time (those were read above): a ratio or score.
    text = re.sub(r"(?<![\d:.,])(?P<a>\d+):(?P<b>\d+)(?![\d:])",
                  lambda m: _pad(f"{_cardinal(m['a'])} to {_cardinal(m['b'])}"), text)
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


def unsupported_letters(text: str) -> str:
    """The letters of ``text`` that are not Latin script (accents included: 'café' is fine). The
    models are English-only: such letters reach them as unfamiliar bytes (or phonemes) and come
    out as babble."""
    return "".join(c for c in text if c.isalpha() and unicodedata.category(c) != "Lm"
                   and not unicodedata.name(c, "LATIN").startswith("LATIN"))


def script_names(letters: str) -> str:
    """'東京' -> 'CJK', 'مرحبا' -> 'Arabic': the Unicode script names of ``letters``, most frequent first."""
    counts: dict[str, int] = {}
    for c in letters:
        word = unicodedata.name(c, "UNKNOWN").split()[0]
        name = word if word == "CJK" else word.title()
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(sorted(counts, key=lambda k: -counts[k]))


def check_speakable(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Normalize ``text`` and make sure something speakable is left.

    Raises :class:`~llamavoice.errors.TextError` for non-strings, empty text, text with no letters
    after normalization (only emoji or symbols), text mostly in a script the English model cannot
    speak (CJK, Arabic, Cyrillic, ...) and text longer than ``max_chars``. Every front end (byte
    BPE, phonemes) goes through here, so they refuse the same texts.
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
    letters = sum(c.isalpha() for c in normalized)
    if not letters:
        preview = text.strip()[:40]
        raise TextError(
            f"Text {preview!r} has no speakable words after normalization (only symbols, emoji or "
            "punctuation). Give text that contains words or numbers.")
    foreign = unsupported_letters(normalized)
    if 2 * len(foreign) >= letters:
        preview = text.strip()[:40]
        raise TextError(
            f"Text {preview!r} is written in a script this English-only model cannot speak "
            f"({script_names(foreign)}); translate it or write it in Latin letters.")
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


def _nearest_cut(cuts: list[int], share: float, max_chars: int) -> int:
    """The cut nearest ``share`` among those that fit and leave no scrap (0: none)."""
    fitting = [c for c in cuts if share // 2 <= c <= max_chars]
    return min(fitting, key=lambda c: abs(c - share), default=0)


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence longer than max_chars into as few pieces as fit, of even length: a model
    speaks a 50+50 split better than 80+20 (the scrap has no context). Each cut is the clause mark
    nearest the even share, else the nearest space, else a hard cut there."""
    out = []
    rest = sentence.strip()
    while len(rest) > max_chars:
        share = len(rest) / -(-len(rest) // max_chars)  # the even length of the pieces still to cut
        cut = _nearest_cut([m.end() for m in _CLAUSE.finditer(rest, 0, max_chars)], share, max_chars)
        if cut < share / 2 or cut > share * 1.5:  # a clause mark far from the even cut: a space near it
            cut = _nearest_cut([m.start() for m in re.finditer(" ", rest[: max_chars + 1])], share, max_chars) or cut
        if cut <= 0:
            cut = min(max_chars, max(1, round(share)))
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

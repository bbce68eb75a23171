"""Transcript normalisation shared by training targets and every WER/CER score.

One function, used everywhere, so that a model is never penalised for a spelling convention: the
training targets, the evaluation references and the hypotheses all pass through `normalize_text`.
The output alphabet is ``a-z``, the apostrophe (only inside a word, as in "don't") and single spaces.
Digits are spelled out because the speech says words, not digits. The function is idempotent.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ALPHABET", "normalize_text", "number_to_words"]

ALPHABET = "abcdefghijklmnopqrstuvwxyz' "
"""Every character `normalize_text` can emit."""

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# Letters that Unicode decomposition does not reduce to ASCII.
_LETTER_MAP = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "þ": "th",
        "ı": "i",
    }
)
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "ʼ": "'", "′": "'"})
_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at "}

_THOUSANDS_SEP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)\b")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_INTEGER = re.compile(r"\d+")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_LOOSE_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_SPACES = re.compile(r"\s+")


def number_to_words(n: int) -> str:
    """Spell 0..9999 as words ("1984" → "one thousand nine hundred eighty four").

    Larger numbers are read digit by digit: the corpus never needs them and a simple, predictable
    rule beats a half-right one.
    """
    if n < 0:
        raise ValueError(f"number_to_words: n must be >= 0, got {n}")
    if n > 9999:
        return " ".join(_ONES[int(d)] for d in str(n))
    if n < 20:
        return _ONES[n]
    words: list[str] = []
    thousands, rest = divmod(n, 1000)
    hundreds, rest = divmod(rest, 100)
    if thousands:
        words += [_ONES[thousands], "thousand"]
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest:
        words.append(_ONES[rest])
    return " ".join(words)


def _digits_to_words(digits: str) -> str:
    # Leading zeros ("007") are read digit by digit, as people say them.
    if len(digits) > 1 and digits.startswith("0"):
        return " ".join(_ONES[int(d)] for d in digits)
    return number_to_words(int(digits))


def _ordinal(match: re.Match[str]) -> str:
    words = _digits_to_words(match.group(1)).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return f" {' '.join(words)} "


def _decimal(match: re.Match[str]) -> str:
    fraction = " ".join(_ONES[int(d)] for d in match.group(2))
    return f" {_digits_to_words(match.group(1))} point {fraction} "


def normalize_text(s: str) -> str:
    """Lowercase ASCII words separated by single spaces; digits spelled out; punctuation removed.

    >>> normalize_text("Don't panic: it's 42%!")
    "don't panic it's forty two percent"
    """
    if not isinstance(s, str):
        raise TypeError(f"normalize_text: expected str, got {type(s).__name__}")
    s = s.translate(_LETTER_MAP).translate(_APOSTROPHES)
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.lower()
    for symbol, word in _SYMBOLS.items():
        s = s.replace(symbol, word)
    s = _THOUSANDS_SEP.sub("", s)
    s = _ORDINAL.sub(_ordinal, s)
    s = _DECIMAL.sub(_decimal, s)
    s = _INTEGER.sub(lambda m: f" {_digits_to_words(m.group(0))} ", s)
    s = _NOT_ALLOWED.sub(" ", s)
    s = _LOOSE_APOSTROPHE.sub(" ", s)
    return _SPACES.sub(" ", s).strip()

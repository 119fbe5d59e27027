"""Text normalization before scoring, and the units (words or characters) text is compared in.

English uses Whisper's English normalizer (spelling, numbers, contractions); every other
language Whisper's basic normalizer (lowercase, punctuation and symbols removed). Chinese,
Japanese and Korean are compared character by character, the others word by word.
"""

from __future__ import annotations

from functools import cache

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

# Languages scored by character error rate and aligned character by character.
CHAR_LANGUAGES = ("zh", "ja", "ko")
# Languages written without spaces between words.
UNSPACED_LANGUAGES = ("zh", "ja")

UNITS = ("word", "char")


def base_language(lang: str) -> str:
    """`"zh-CN"` / `"EN"` -> `"zh"` / `"en"`: the code the rules here are keyed on."""
    return lang.strip().lower().replace("_", "-").split("-")[0]


def unit_for(lang: str | None) -> str:
    """`"char"` for Chinese, Japanese and Korean, `"word"` otherwise (also when unknown)."""
    return "char" if lang is not None and base_language(lang) in CHAR_LANGUAGES else "word"


@cache
def _english() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


@cache
def _basic() -> BasicTextNormalizer:
    return BasicTextNormalizer()


def normalize(text: str, lang: str) -> str:
    """Whisper's English normalizer for `en`, its basic normalizer otherwise; spaces collapsed."""
    norm = _english() if base_language(lang) == "en" else _basic()
    return " ".join(norm(text).split())


def split_units(text: str, unit: str) -> list[str]:
    """Words (whitespace-separated) or characters (whitespace runs kept as one space)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}; got '{unit}'")
    words = text.split()
    return words if unit == "word" else list(" ".join(words))


def join_units(units: list[str], unit: str) -> str:
    """Inverse of `split_units`; whitespace runs collapse to one space."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}; got '{unit}'")
    return " ".join((" " if unit == "word" else "").join(units).split())

"""Real sentences of the demo corpus: Debian's fortune-cookie files, where a language has them.

Each source is a Debian package of fortune files (`/usr/share/games/fortunes`); a cookie is the
text between two `%` lines. A cookie is cut into sentences; a sentence is kept only if it reads
as plain text of its language: an upper-case first letter, a final `.`, `?` or `!`,
nothing but letters of the language's script, digits, spaces and `, ; : - '` (quotes, brackets,
ellipses, URLs, verse and attributions drop out), and `words_per_sentence` words. Italian
fortunes write accents with an apostrophe (`e'`, `perche'`), which becomes the accented letter.

Cookies, not sentences, are split between training and the held-out sets, so no two splits
share a cookie: a held-out sentence never has its neighbour in training.
"""

from __future__ import annotations

import functools
import random
import re
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from data_prep.demo_text import script_letters

# Language -> the Debian package of its fortune files (licences in the README).
FORTUNE_PACKAGES = {
    "en": "fortunes",
    "de": "fortunes-de",
    "es": "fortunes-es",
    "it": "fortunes-it",
    "pt": "fortunes-br",
    "ru": "fortunes-ru",
}
# Not used: fortunes-zh (mostly classical poetry and prose, not the Mandarin a speaker reads);
# Debian has no fortune files in French, Dutch, Japanese or Korean.
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Cookies of each held-out split per language: a fixed pool, so the held-out sets do not change
# with the size of the training set.
HELD_OUT_COOKIES = 400
# Terminal colour codes (the Chinese files colour titles and authors).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# An attribution line (`-- Author`) and everything after it.
_ATTRIBUTION = re.compile(r"\n\s*(--|—|~~)\s.*", re.S)
# A sentence ends at `.`, `?` or `!` followed by a space or the end.
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_PUNCTUATION = set(",.?!;:-' ")
# Italian accents written as an apostrophe: `perche'` -> `perché`, `e'` -> `è`, not `po'`.
_ITALIAN_ACUTE = re.compile(r"\b(\w*ch|n|s)e'(?=\W|$)")
_ITALIAN_GRAVE = re.compile(r"\b(?!po')(\w*?)([aeiou])'(?=\W|$)")
_GRAVE = {"a": "à", "e": "è", "i": "ì", "o": "ò", "u": "ù"}


@dataclass(frozen=True)
class FortunePools:
    """A language's fortune sentences by split (cookies never shared between splits)."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]


def _package_files(package: str) -> list[Path]:
    """The fortune files a Debian package installed (not the `.dat` indexes, not links).

    Raises:
        RuntimeError: the package is not installed.
    """
    listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True)
    if listed.returncode != 0:
        raise RuntimeError(
            f"the demo corpus reads real sentences from the Debian package {package}, "
            "which is not installed: run `make tts` (as root)"
        )
    paths = [Path(line) for line in listed.stdout.splitlines()]
    return sorted(
        p
        for p in paths
        if FORTUNE_DIR in p.parents
        and p.suffix != ".dat"
        and p.is_file()
        and not p.is_symlink()
        and "off" not in p.relative_to(FORTUNE_DIR).parts  # the offensive sections
    )


def _italian_accents(text: str) -> str:
    text = _ITALIAN_ACUTE.sub(lambda m: m[1] + "é", text)
    return _ITALIAN_GRAVE.sub(lambda m: m[1] + _GRAVE[m[2]], text)


def cookie_sentences(cookie: str, lang: str, words: tuple[int, int]) -> list[str]:
    """The plain-text sentences of one fortune cookie (see the module docstring), NFC."""
    text = _ATTRIBUTION.sub("", _ANSI.sub("", cookie))
    if lang == "it":
        text = _italian_accents(text)
    # dialogue dashes and line breaks are layout, not text
    text = " ".join(re.sub(r"^\s*[-–—]\s+", "", line) for line in text.splitlines())
    text = unicodedata.normalize("NFC", re.sub(r"\s+", " ", text))
    letter = script_letters(lang)
    out = []
    for sentence in _SENTENCE_END.split(text.strip()):
        sentence = sentence.strip()
        plain = all(letter(c) or c.isdigit() or c in _PUNCTUATION for c in sentence)
        ends = sentence[-1:] in {".", "?", "!"}
        if not plain or not ends or ".." in sentence or "--" in sentence:
            continue
        count = sum(any(letter(c) for c in w) for w in sentence.split())
        if words[0] <= count <= words[1] and sentence[0].isupper():
            out.append(sentence)
    return out


def _cookies(package: str) -> list[str]:
    cookies = []
    for path in _package_files(package):
        text = path.read_text(encoding="utf-8", errors="replace")
        cookies += [c for c in re.split(r"^%\s*$", text, flags=re.M) if c.strip()]
    return cookies


def package_version(package: str) -> str:
    """Installed version of a Debian package ('' when it is not installed)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def fortune_pools(lang: str, words: tuple[int, int], seed: int) -> FortunePools | None:
    """The fortune sentences of `lang` split into training and held-out pools (seeded), or
    None for a language without a fortune package."""
    package = FORTUNE_PACKAGES.get(lang)
    if package is None:
        return None
    cookies = _cookies(package)
    random.Random(f"{seed}:{lang}:fortune-cookies").shuffle(cookies)
    held = 2 * HELD_OUT_COOKIES
    if len(cookies) < 2 * held:
        raise RuntimeError(f"{package} holds only {len(cookies)} cookies, fewer than {2 * held}")

    def sentences(part: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s for c in part for s in cookie_sentences(c, lang, words)))

    # a saying may stand in several cookies: each sentence goes to the first split that has it
    valid = sentences(cookies[:HELD_OUT_COOKIES])
    taken = set(valid)
    test = tuple(s for s in sentences(cookies[HELD_OUT_COOKIES:held]) if s not in taken)
    taken.update(test)
    train = tuple(s for s in sentences(cookies[held:]) if s not in taken)
    return FortunePools(train=train, valid=valid, test=test)

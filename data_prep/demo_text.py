"""Sentences of the demo corpus: thousands of real words per language, held-out words, numbers.

Each language draws from its `vocabulary` most frequent words (`wordfreq`, in the script the
language is written in), more frequent words more often. A share of the words beyond the most
frequent ones never occurs in training: half of them are the validation set's, half the test
set's. A held-out sentence carries one of its own held-out words in HELD_OUT_WORD_SHARE of the
cases, amid frequent training words, so both held-out sets measure words the model never heard
beside words it heard often.
Sentences are written as text has them: a capital first letter, commas, a final `.`, `?` or
`!`, and numbers in digits.

Scripts espeak-ng cannot read directly keep their transcript as written and speak a reading:
    zh  hanzi transcripts, spoken from pinyin with tone numbers (`pypinyin`, phrase-aware)
        through the `cmn-latn-pinyin` voice; numbers from 1 to 99 (their kanji reading is the
        same in Chinese and Japanese: `num2words`' Japanese converter).
    ja  transcripts with kanji where the word has them, spoken from their hiragana reading
        (`pykakasi`).
"""

from __future__ import annotations

import functools
import importlib
import math
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Languages whose words must be written in Latin-1 (the festival Italian voices read Latin-1).
LATIN_1 = {"it"}
# Languages written without spaces between words.
NO_SPACES = {"zh", "ja"}
# Words of this frequency rank and below are never held out: function words belong to every
# sentence a model will hear.
HELD_OUT_FROM_RANK = 300
# Share of the words beyond that rank held out of training (half validation, half test).
HELD_OUT_SHARE = 0.1
# Share of sentences with a number in digits; numbers up to this many (zh/ja: 99, see above).
NUMBER_SHARE = 0.25
NUMBER_MAX = 2030
# Share of sentences with a comma, of questions and of exclamations (the rest end with `.`).
COMMA_SHARE = 0.25
QUESTION_SHARE = 0.15
EXCLAMATION_SHARE = 0.05
# Sampling weight of a word of frequency rank r (0-based): 1 / (r + RANK_OFFSET) ** RANK_POWER.
RANK_OFFSET = 20
RANK_POWER = 1.0
# Share of held-out sentences given one held-out word.
HELD_OUT_WORD_SHARE = 0.4
# Held-out sentences draw their other words from this many most frequent training words: each
# of them occurs in training several times, so a held-out sentence's unknown words are mostly
# the held-out ones, whatever the size of the training set.
HELD_OUT_CONTEXT = 1000
# Fewest usable words a language's list may hold.
MIN_WORDS = 1000


@dataclass(frozen=True)
class Sentence:
    # Transcript as written (NFC).
    text: str
    # What the synthesizer reads (pinyin for zh, hiragana for ja, else the transcript).
    spoken: str
    # The sentence's words, as drawn (before casing and punctuation).
    words: tuple[str, ...]


def demo_package(name: str):
    """Import one of the demo's text generators, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise RuntimeError(
            f"the demo corpus needs the Python package {name}: "
            "`pip install 'whisfusion[demo]'` (make setup installs it)"
        ) from err


@functools.cache
def _kakasi():
    return demo_package("pykakasi").kakasi()


def hiragana(text: str) -> str:
    """Hiragana reading of Japanese text (kanji, katakana and kana)."""
    return "".join(part["hira"] for part in _kakasi().convert(text))


def _is_kana(c: str) -> bool:
    return "\u3041" <= c <= "\u30ff"


def _is_hanzi(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff"


def _is_hangul(c: str) -> bool:
    return "\uac00" <= c <= "\ud7a3"


def script_letters(lang: str):
    """Predicate on characters: a letter of the script `lang` is written in."""
    if lang == "ja":
        return lambda c: _is_kana(c) or _is_hanzi(c)
    if lang == "zh":
        return _is_hanzi
    if lang == "ko":
        return _is_hangul
    name = "CYRILLIC" if lang == "ru" else "LATIN"
    if lang in LATIN_1:
        return lambda c: unicodedata.name(c, "").startswith(f"{name} ") and ord(c) < 256
    return lambda c: unicodedata.name(c, "").startswith(f"{name} ")


@functools.cache
def word_list(lang: str, top: int) -> tuple[str, ...]:
    """Real words of `lang` among its `top` most frequent, in its script, most frequent first.

    Raises:
        RuntimeError: fewer than MIN_WORDS usable words (or fewer than `top` / 2).
    """
    top_n_list = demo_package("wordfreq").top_n_list
    letter = script_letters(lang)
    words = [w for w in top_n_list(lang, top) if w and all(letter(c) for c in w)]
    if lang == "ja":  # every word must have a reading espeak-ng can speak
        words = [w for w in words if all(_is_kana(c) for c in hiragana(w))]
    out = tuple(dict.fromkeys(unicodedata.normalize("NFC", w) for w in words))
    if len(out) < min(MIN_WORDS, top // 2):
        raise RuntimeError(
            f"wordfreq gives only {len(out)} usable words for '{lang}' in its top {top}"
        )
    return out


@dataclass(frozen=True)
class Lexicon:
    """A language's words split into training, validation-only and test-only words."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    # Sampling weights of `train` (see RANK_OFFSET).
    weights: tuple[float, ...]


@functools.cache
def lexicon(lang: str, vocabulary: int, seed: int) -> Lexicon:
    """Split the `vocabulary` most frequent words of `lang` (seeded, stable across sizes of
    the training set)."""
    words = word_list(lang, vocabulary)
    rng = random.Random(f"{seed}:{lang}:held-out-words")
    tail = list(range(HELD_OUT_FROM_RANK, len(words)))
    held = rng.sample(tail, round(HELD_OUT_SHARE * len(tail)))
    valid_ranks, test_ranks = set(held[::2]), set(held[1::2])
    train_ranks = [r for r in range(len(words)) if r not in valid_ranks and r not in test_ranks]
    return Lexicon(
        train=tuple(words[r] for r in train_ranks),
        valid=tuple(words[r] for r in sorted(valid_ranks)),
        test=tuple(words[r] for r in sorted(test_ranks)),
        weights=tuple(1.0 / (r + RANK_OFFSET) ** RANK_POWER for r in train_ranks),
    )


def _kanji_number(n: int) -> str:
    return demo_package("num2words").num2words(n, lang="ja")


def _number(lang: str, rng: random.Random) -> int:
    if lang in NO_SPACES:
        return rng.randint(1, 99)
    # mostly small numbers, some years and larger amounts, as text has them
    return rng.choice([rng.randint(1, 20), rng.randint(21, 100), rng.randint(100, NUMBER_MAX)])


# Punctuation of Chinese and Japanese text.
CJK_MARKS = {
    "zh": {",": "，", ".": "。", "?": "？", "!": "！"},
    "ja": {",": "、", ".": "。", "?": "？", "!": "！"},
}


def _reading(lang: str, piece: str | int) -> str:
    """What espeak-ng reads for a zh / ja word or number: pinyin with tone numbers, or
    hiragana."""
    written = _kanji_number(piece) if isinstance(piece, int) else piece
    if lang == "zh":
        pypinyin = demo_package("pypinyin")
        style = pypinyin.Style.TONE3
        return " ".join(pypinyin.lazy_pinyin(written, style=style, neutral_tone_with_five=True))
    return hiragana(written)


def _render(lang: str, pieces: list[str | int], comma: int | None, end: str) -> tuple[str, str]:
    """(transcript, spoken) of words and numbers `pieces`, a comma after piece `comma`, and
    the final mark `end` (`.`, `?` or `!`)."""
    written = [str(p) for p in pieces]
    if lang in NO_SPACES:
        marks = CJK_MARKS[lang]
        text = "".join(w + (marks[","] if i == comma else "") for i, w in enumerate(written))
        spoken = " ".join(
            _reading(lang, p) + ("," if i == comma else "") for i, p in enumerate(pieces)
        )
        return text + marks[end], spoken + end
    if comma is not None:
        written[comma] += ","
    text = " ".join(written)
    if lang != "ko":  # hangul has no case
        text = text[0].upper() + text[1:]
    return text + end, text + end


def word_count(rng: random.Random, low: int, high: int) -> int:
    """A sentence length in [low, high], log-uniform: as many sentences of 2-4 words as of
    10-20, so short prompts and long read sentences both occur while most words sit in the
    longer ones, as in speech corpora."""
    if not 1 <= low <= high:
        raise ValueError(f"words per sentence must satisfy 1 <= low <= high, got {low}, {high}")
    return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))


def make_sentence(
    lang: str,
    rng: random.Random,
    lex: Lexicon,
    words: Sequence[int],
    held_out: Sequence[str] = (),
) -> Sentence:
    """One sentence of `words[0]..words[1]` words drawn from the training words of `lex`
    (one of them, in HELD_OUT_WORD_SHARE of the sentences, a word of `held_out`)."""
    n = word_count(rng, *words)
    pool = slice(None, HELD_OUT_CONTEXT if held_out else None)
    drawn = rng.choices(lex.train[pool], weights=lex.weights[pool], k=n)
    if held_out and rng.random() < HELD_OUT_WORD_SHARE:
        drawn[rng.randrange(n)] = rng.choice(held_out)
    pieces: list[str | int] = list(drawn)
    if rng.random() < NUMBER_SHARE:
        pieces.insert(rng.randrange(n + 1), _number(lang, rng))
    comma = None
    if len(pieces) > 3 and rng.random() < COMMA_SHARE:
        comma = rng.randrange(1, len(pieces) - 1)
    u = rng.random()
    end = "?" if u < QUESTION_SHARE else "!" if u < QUESTION_SHARE + EXCLAMATION_SHARE else "."
    text, spoken = _render(lang, pieces, comma, end)
    return Sentence(unicodedata.normalize("NFC", text), spoken, tuple(drawn))

"""A small multilingual speech corpus synthesized locally with espeak-ng.

Sentences of 3-8 real words drawn from each language's frequency list (`wordfreq`), sometimes
with a number written out (`num2words`), spoken by several espeak-ng voice variants at several
rates and pitches, resampled to 16 kHz mono. Validation sentences never occur in training.

Scripts espeak-ng cannot read directly:
    zh  transcripts in hanzi; spoken from pinyin with tone numbers (`pypinyin`, phrase-aware)
        through the `cmn-latn-pinyin` voice. Numbers 1-99 come from num2words' Japanese
        converter: below 100, kanji numerals are written the same in Chinese.
    ja  espeak-ng reads kana, not kanji: words of the frequency list are converted to hiragana
        (`pykakasi`) and the transcript is that kana text.
    ko  hangul, read directly.

    build_demo_corpus(Path("data/demo/corpus"), DemoConfig(train_per_lang=300))
writes `audio/<lang>/<id>.flac`, `train.jsonl` and `valid.jsonl`, and is skipped when a corpus of
the same settings is already there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import random
import shutil
import subprocess
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from data_prep.parallel import parallel_map
from whisfusion.config import TokenizerConfig
from whisfusion.data.audio_io import SAMPLE_RATE, read_audio, to_mono_16k

log = logging.getLogger("data_prep.demo")

# Bumped whenever the generator changes what it writes, so cached corpora are rebuilt.
GENERATOR_VERSION = 2
# espeak-ng voices per language (one is drawn per utterance).
VOICES = {
    "en": ["en-us", "en-gb"],
    "de": ["de"],
    "fr": ["fr-fr", "fr-be"],
    "es": ["es", "es-419"],
    "it": ["it"],
    "pt": ["pt", "pt-br"],
    "nl": ["nl"],
    "ru": ["ru"],
    "zh": ["cmn-latn-pinyin"],
    "ja": ["ja"],
    "ko": ["ko"],
}
# Voice variants (speaker timbre), "" = the voice's own.
VARIANTS = ["", "m1", "m2", "m3", "m4", "f1", "f2", "f3", "f4"]
# Speaking rate (words per minute) and pitch (0-99) ranges.
RATE_WPM = (130, 190)
PITCH = (35, 65)
# Share of sentences with a number (1-99) written out in words.
NUMBER_SHARE = 0.3
# Languages written without spaces between words.
NO_SPACES = {"zh", "ja"}
# Quieter than this RMS, espeak-ng produced no speech.
MIN_RMS = 1e-3


@dataclass
class DemoConfig:
    # Languages (keys of VOICES).
    languages: list[str] = field(default_factory=lambda: list(TokenizerConfig().languages))
    # Training utterances per language: more lower held-out CER at equal steps (the frozen
    # features of an utterance never change, so fewer passes over more utterances overfit
    # less; the alignment head's held-out CER is 21.6% at 600, 19.7% at 1200); each 100 more
    # cost about 20 s of synthesis and encoding in `make train`, which takes about 18 minutes at
    # 1200 (about 38 minutes of speech per language).
    train_per_lang: int = 1200
    # Validation utterances per language.
    valid_per_lang: int = 40
    # Sentences draw from this many most frequent words per language: small enough that the
    # ~1500 steps of a CPU run show each word dozens of times (validation sentences are new
    # word sequences, never new words). 300 words take several times the steps for the same CER.
    vocabulary: int = 50
    # Fewest and most words per sentence (plus an optional number).
    words_per_sentence: list[int] = field(default_factory=lambda: [3, 8])
    # Seed of the sentences, voices, rates and pitches.
    seed: int = 0
    # Synthesis processes.
    jobs: int = 2

    def fingerprint(self) -> str:
        """Hash of everything that decides the corpus content (not `jobs`)."""
        content = {**asdict(self), "jobs": None, "version": GENERATOR_VERSION, "espeak": _espeak()}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def _espeak() -> str:
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng; `make espeak`)")
    return subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()


def _demo_package(name: str):
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
    return _demo_package("pykakasi").kakasi()


def _hiragana(text: str) -> str:
    return "".join(part["hira"] for part in _kakasi().convert(text))


def _is_kana(word: str) -> bool:
    return all("\u3041" <= c <= "\u30ff" for c in word)


def _is_hanzi(word: str) -> bool:
    return all("\u4e00" <= c <= "\u9fff" for c in word)


def _is_hangul(word: str) -> bool:
    return all("\uac00" <= c <= "\ud7a3" for c in word)


def _in_script(script: str):
    """Predicate: every character is a letter of `script` ("LATIN", "CYRILLIC")."""
    return lambda word: all(unicodedata.name(c, "").startswith(f"{script} ") for c in word)


@functools.cache
def word_list(lang: str, top: int) -> list[str]:
    """Real words of `lang` among its `top` most frequent, in the script espeak-ng reads."""
    words = _demo_package("wordfreq").top_n_list(lang, top)
    if lang == "ja":
        words = [_hiragana(w) for w in words]
        keep = _is_kana
    elif lang == "zh":
        keep = _is_hanzi
    elif lang == "ko":
        keep = _is_hangul
    else:  # frequency lists carry some English and URL fragments: keep the language's script
        keep = _in_script("CYRILLIC" if lang == "ru" else "LATIN")
    out = list(dict.fromkeys(w for w in words if w and keep(w)))
    if len(out) < 20:
        raise RuntimeError(
            f"wordfreq gives only {len(out)} usable words for '{lang}' in its top {top}"
        )
    return out


def _number(lang: str, n: int) -> str:
    num2words = _demo_package("num2words").num2words
    if lang in ("zh", "ja"):
        kanji = num2words(n, lang="ja")
        return kanji if lang == "zh" else _hiragana(kanji)
    return num2words(n, lang=lang)


def make_sentence(
    lang: str, rng: random.Random, vocabulary: int, words: Sequence[int]
) -> tuple[str, str]:
    """(transcript, text given to espeak-ng) of one random sentence.

    Args:
        vocabulary: draw from this many most frequent words of the language.
        words: fewest and most words (an optional number comes on top).
    """
    pool = word_list(lang, vocabulary)
    words = rng.sample(pool, min(len(pool), rng.randint(*words)))
    if rng.random() < NUMBER_SHARE:
        words.insert(rng.randrange(len(words) + 1), _number(lang, rng.randint(1, 99)))
    if lang == "zh":
        pypinyin = _demo_package("pypinyin")
        text = "".join(words)
        spoken = " ".join(
            pypinyin.lazy_pinyin(text, style=pypinyin.Style.TONE3, neutral_tone_with_five=True)
        )
        return text + "。", spoken
    if lang == "ja":
        return "".join(words) + "。", " ".join(words)
    text = " ".join(words)
    if lang != "ko":
        text = text[0].upper() + text[1:]
    end = "?" if rng.random() < 0.2 else "."
    return text + end, text + end


def distinct_sentences(
    lang: str,
    count: int,
    rng: random.Random,
    cfg: DemoConfig,
    exclude: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """`count` (text, spoken) sentences with pairwise different transcripts, none in `exclude`."""
    found: dict[str, str] = {}
    for _ in range(100 * count + 100):
        if len(found) == count:
            break
        text, spoken = make_sentence(lang, rng, cfg.vocabulary, cfg.words_per_sentence)
        text = unicodedata.normalize("NFC", text)
        if text not in exclude:
            found.setdefault(text, spoken)
    else:
        raise RuntimeError(f"could not make {count} distinct '{lang}' sentences")
    return list(found.items())


def plan_utterances(cfg: DemoConfig) -> list[tuple[str, dict, tuple[str, str, int, int]]]:
    """Every utterance of the corpus: its split, its manifest row (no duration yet) and its
    synthesis settings (spoken text, voice, rate, pitch).

    Each (language, split) draws from its own seeded generator, and validation sentences are
    drawn first, so the held-out set does not change when `train_per_lang` does (runs with
    more or less training data stay comparable) and a larger training set extends a smaller
    one; training sentences exclude the held-out ones.
    """
    planned = []
    for lang in cfg.languages:
        held_out: frozenset[str] = frozenset()
        for split, count in (("valid", cfg.valid_per_lang), ("train", cfg.train_per_lang)):
            # sentences and voices from separate generators: a larger split starts with the
            # utterances of a smaller one
            rng = random.Random(f"{cfg.seed}:{lang}:{split}:voices")
            sentences = distinct_sentences(
                lang, count, random.Random(f"{cfg.seed}:{lang}:{split}"), cfg, exclude=held_out
            )
            held_out = frozenset(text for text, _ in sentences)
            for k, (text, spoken) in enumerate(sentences):
                utt_id = f"demo-{lang}-{split}-{k:05d}"
                voice = rng.choice(VOICES[lang])
                variant = rng.choice(VARIANTS)
                voice = f"{voice}+{variant}" if variant else voice
                row = {
                    "id": utt_id,
                    "audio": f"audio/{lang}/{utt_id}.flac",
                    "text": text,
                    "lang": lang,
                    "speaker": voice,
                }
                settings = (spoken, voice, rng.randint(*RATE_WPM), rng.randint(*PITCH))
                planned.append((split, row, settings))
    return planned


def synthesize(job: tuple[str, str, int, int, str]) -> float:
    """Speak `text` with espeak-ng into a 16 kHz mono FLAC file; returns its duration (s)."""
    text, voice, rate, pitch, out_path = job
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout"]
    result = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"espeak-ng {voice} failed on {text!r}: {result.stderr.decode()[-300:]}")
    samples, rate_hz = read_audio(result.stdout)  # espeak-ng writes 22050 Hz WAV
    wave = to_mono_16k(samples, rate_hz)
    if float(np.sqrt(np.mean(wave**2))) < MIN_RMS:
        raise RuntimeError(f"espeak-ng {voice} produced silence for {text!r}")
    sf.write(out_path, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return wave.size / SAMPLE_RATE


def build_demo_corpus(out: Path, cfg: DemoConfig) -> Path:
    """Synthesize the corpus into `out` (skipped when `out` holds one of the same settings)."""
    marker = out / ".done.json"
    fingerprint = cfg.fingerprint()
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        log.info("demo corpus in %s is up to date", out)
        return out
    unknown = sorted(set(cfg.languages) - set(VOICES))
    if unknown:
        raise ValueError(f"no demo voice for {unknown}; available: {sorted(VOICES)}")
    shutil.rmtree(out, ignore_errors=True)
    for lang in cfg.languages:
        (out / "audio" / lang).mkdir(parents=True)
    planned = plan_utterances(cfg)
    ordered = [row for _, row, _ in planned]
    jobs = [(*settings, str(out / row["audio"])) for _, row, settings in planned]
    start = time.perf_counter()
    durations = list(parallel_map(synthesize, jobs, cfg.jobs))
    seconds = time.perf_counter() - start
    for row, duration in zip(ordered, durations, strict=True):
        row["duration"] = round(duration, 4)
    for split in ("train", "valid"):
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(
                json.dumps(row, ensure_ascii=False) + "\n"
                for row_split, row, _ in planned
                if row_split == split
            )
    log.info(
        "demo corpus: %d utterances, %.2f h, synthesized in %.1f s with %d process(es) "
        "(%.1f s per 100 utterances)",
        len(jobs),
        sum(durations) / 3600.0,
        seconds,
        cfg.jobs,
        100.0 * seconds / max(len(jobs), 1),
    )
    marker.write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(cfg)}) + "\n")
    return out

"""A small multilingual speech corpus synthesized locally: open vocabulary, held-out voices.

Sentences come from `data_prep.demo_text` (thousands of real words per language, some held
out of training) and, for a share of them where a language has any, from Debian's fortune
files (`data_prep.demo_fortunes`: real sentences, cookies never shared between splits), voices
from `data_prep.demo_voices` (training and held-out voices disjoint).
Three splits per language:
    train   `train_per_lang` sentences of training words, training voices
    valid   `valid_per_lang` sentences (the development set, for choices): generated ones with
            words of the validation-only words, held-out fortunes; held-out voices
    test    `test_per_lang` sentences likewise, with the test-only words and fortunes
    long    valid's utterances joined into passages of 2-4 (`data_prep.demo_passages`): the
            development set for clips longer than one sentence
Training may also hold passages of its own utterances (`train_passages_per_lang`, up to 28 s;
off by default).
The held-out splits are drawn from their own seeded generators, so they stay the same whatever
the size of the training set or its share of fortunes, and a larger training set extends a
smaller one.

    build_demo_corpus(Path("data/demo/corpus"), DemoConfig(train_per_lang=300))
writes `audio/<lang>/<id>.flac`, `{train,valid,test,long}.jsonl` and `report.json` (sizes, distinct
words, out-of-vocabulary rates, voices per split), and is skipped when a corpus of the same
settings is already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.demo_fortunes import FORTUNE_PACKAGES, fortune_pools, package_version
from data_prep.demo_passages import Passage, join_passage, plan_passages
from data_prep.demo_text import Lexicon, Sentence, lexicon, make_sentence
from data_prep.demo_voices import BATCH, ESPEAK_VOICES, draw_voice, engine_versions, synthesize
from data_prep.parallel import parallel_map
from whisfusion.config import TokenizerConfig
from whisfusion.data.shards import write_json_atomic
from whisfusion.scoring.normalizers import UNSPACED_LANGUAGES, normalize, split_units

log = logging.getLogger("data_prep.demo")

# Bumped whenever the generator changes what it writes, so cached corpora are rebuilt.
GENERATOR_VERSION = 6
# Splits of the synthesized corpus, in the order they are drawn; held-out ones first.
CORPUS_SPLITS = ("valid", "test", "train")
HELD_OUT_SPLITS = ("valid", "test")
# The split of passages joined from valid's utterances.
LONG_SPLIT = "long"
# Longest passage, seconds: Whisper's 30 s window less room for a slower reading of it.
PASSAGE_MAX_S = 28.0
# Share of held-out sentences taken from fortune files where a language has them: fixed, so the
# held-out sets stay the same whatever the training set's share.
HELD_OUT_REAL_SHARE = 0.5


@dataclass
class DemoConfig:
    # Languages (keys of data_prep.demo_voices.ESPEAK_VOICES).
    languages: list[str] = field(default_factory=lambda: list(TokenizerConfig().languages))
    # Training utterances per language: about 40 minutes of speech per language, 7-8 hours in
    # all, what synthesis (about 8 minutes) and a 20-minute training run can use.
    train_per_lang: int = 600
    # Validation (development) utterances per language: held-out words and voices.
    valid_per_lang: int = 40
    # Test utterances per language: held-out words (others than validation's) and voices.
    test_per_lang: int = 60
    # Sentences draw from this many most frequent words per language (a tenth of those beyond
    # the 300 most frequent are held out of training).
    vocabulary: int = 8000
    # Fewest and most words per sentence (plus an optional number), log-uniform
    # (data_prep.demo_text.word_count): 1-10 s of speech, so a model meets the lengths of
    # prompts and of read sentences.
    words_per_sentence: list[int] = field(default_factory=lambda: [2, 20])
    # Share of training sentences taken from the language's Debian fortune files (real text,
    # with the context a language model learns) where it has them; the rest are generated.
    real_share: float = 0.5
    # Training passages per language: 2-4 of its training utterances joined (up to 28 s), for
    # a model to meet clips longer than one sentence. 100 (10 h in all) gave the default's
    # config 76.9 instead of 75.4 on valid and no gain on `long` (docs/history.md): off.
    train_passages_per_lang: int = 0
    # Fewest and most utterances per passage (training and the `long` split).
    passage_sentences: list[int] = field(default_factory=lambda: [2, 4])
    # Seed of the words held out, sentences, voices, rates and pitches.
    seed: int = 0
    # Synthesis processes.
    jobs: int = 2

    def __post_init__(self):
        if not 0.0 <= self.real_share <= 1.0:
            raise ValueError(f"demo corpus: real_share must lie in [0, 1], got {self.real_share}")
        if self.train_passages_per_lang < 0:
            raise ValueError(
                f"demo corpus: train_passages_per_lang must be >= 0, got "
                f"{self.train_passages_per_lang}"
            )
        lo, hi = self.passage_sentences
        if not 2 <= lo <= hi:
            raise ValueError(
                f"demo corpus: passage_sentences must be [min, max] with 2 <= min <= max, got "
                f"{self.passage_sentences}"
            )

    def fingerprint(self) -> str:
        """Hash of everything that decides the corpus content (not `jobs`)."""
        content = {
            **asdict(self),
            "jobs": None,
            "version": GENERATOR_VERSION,
            "engines": engine_versions(),
            "fortunes": {p: package_version(p) for p in FORTUNE_PACKAGES.values()},
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def count(self, split: str) -> int:
        return {"train": self.train_per_lang, "valid": self.valid_per_lang}.get(
            split, self.test_per_lang
        )


def distinct_sentences(
    lang: str,
    split: str,
    count: int,
    cfg: DemoConfig,
    exclude: frozenset[str] = frozenset(),
) -> list[Sentence]:
    """`count` sentences of `split` with pairwise different transcripts, none in `exclude`;
    a held-out split's draw on its own held-out words."""
    lex = lexicon(lang, cfg.vocabulary, cfg.seed)
    held_out = {"valid": lex.valid, "test": lex.test}.get(split, ())
    rng = random.Random(f"{cfg.seed}:{lang}:{split}")
    real = real_sentences(lang, split, cfg, lex)
    share = cfg.real_share if split == "train" else HELD_OUT_REAL_SHARE
    found: dict[str, Sentence] = {}
    for _ in range(100 * count + 100):
        if len(found) == count:
            break
        if real and rng.random() < share:
            text = real.pop()
            sentence = Sentence(text, text, tuple(text.split()))
        else:
            sentence = make_sentence(lang, rng, lex, cfg.words_per_sentence, held_out)
        if sentence.text not in exclude:
            found.setdefault(sentence.text, sentence)
    else:
        raise RuntimeError(f"could not make {count} distinct '{lang}' {split} sentences")
    return list(found.values())


def real_sentences(lang: str, split: str, cfg: DemoConfig, lex: Lexicon) -> list[str]:
    """The fortune sentences `split` may draw from `lang`'s pool, in seeded order (drawn from
    the end); none for a language without fortunes. Training sentences never hold a word the
    generator keeps for the held-out sets, so those stay out of training."""
    pools = fortune_pools(lang, tuple(cfg.words_per_sentence), cfg.seed)
    if pools is None:
        return []
    pool = list(getattr(pools, split))
    if split == "train":
        kept_out = set(lex.valid) | set(lex.test)
        pool = [s for s in pool if kept_out.isdisjoint(re.findall(r"\w+", s.lower()))]
    random.Random(f"{cfg.seed}:{lang}:{split}:fortunes").shuffle(pool)
    return pool


def plan_utterances(cfg: DemoConfig) -> list[tuple[str, dict, tuple]]:
    """Every utterance of the corpus: its split, its manifest row (no duration yet) and its
    synthesis settings (spoken text, Voice).

    Each (language, split) draws sentences and voices from its own seeded generators, so a
    split does not change when another's size does; training sentences exclude held-out ones.
    """
    planned = []
    for lang in cfg.languages:
        taken: frozenset[str] = frozenset()
        for split in CORPUS_SPLITS:
            sentences = distinct_sentences(lang, split, cfg.count(split), cfg, exclude=taken)
            taken |= {s.text for s in sentences}
            rng = random.Random(f"{cfg.seed}:{lang}:{split}:voices")
            for k, sentence in enumerate(sentences):
                utt_id = f"demo-{lang}-{split}-{k:05d}"
                voice = draw_voice(lang, split in HELD_OUT_SPLITS, rng)
                row = {
                    "id": utt_id,
                    "audio": f"audio/{lang}/{utt_id}.flac",
                    "text": sentence.text,
                    "lang": lang,
                    "speaker": voice.speaker,
                }
                planned.append((split, row, (sentence.spoken, voice)))
    return planned


def plan_corpus_passages(rows: dict[str, list[dict]], cfg: DemoConfig) -> dict[str, list[Passage]]:
    """The passages of every language: `train_passages_per_lang` drawn from the training
    utterances' passages (seeded), and every passage of valid's utterances as split `long`."""
    out: dict[str, list[Passage]] = {"train": [], LONG_SPLIT: []}
    sizes = cfg.passage_sentences
    for lang in cfg.languages:
        if cfg.train_passages_per_lang:
            train = [r for r in rows["train"] if r["lang"] == lang]
            seed = f"{cfg.seed}:{lang}:train:p"
            drawn = plan_passages(train, sizes, PASSAGE_MAX_S, seed, "train")
            random.Random(f"{cfg.seed}:{lang}:train:passages").shuffle(drawn)
            out["train"] += drawn[: cfg.train_passages_per_lang]
        valid = [r for r in rows["valid"] if r["lang"] == lang]
        seed = f"{cfg.seed}:{lang}:{LONG_SPLIT}"
        out[LONG_SPLIT] += plan_passages(valid, sizes, PASSAGE_MAX_S, seed, LONG_SPLIT)
    return out


def _units(text: str, lang: str) -> list[str]:
    """Scoring units of a transcript: characters for zh / ja (spaces dropped), else words."""
    unit = "char" if lang in UNSPACED_LANGUAGES else "word"
    return [u for u in split_units(normalize(text, lang), unit) if u != " "]


def corpus_report(rows: dict[str, list[dict]]) -> dict:
    """Per language and split: utterances, hours, distinct units, voices; for every split but
    train, its out-of-vocabulary rate (share of its words, or zh / ja characters, that no
    training transcript holds) and how many of its voices training used.

    Args:
        rows: manifest rows (`text`, `lang`, `speaker`, `duration`) by split; needs `train`.
    """
    languages = sorted({r["lang"] for split_rows in rows.values() for r in split_rows})
    known = {lang: set() for lang in languages}
    train_voices = {lang: set() for lang in languages}
    for r in rows["train"]:
        known[r["lang"]].update(_units(r["text"], r["lang"]))
        train_voices[r["lang"]].add(r.get("speaker"))
    report: dict = {}
    for split, split_rows in rows.items():
        for lang in languages:
            mine = [r for r in split_rows if r["lang"] == lang]
            if not mine:
                continue
            units = [u for r in mine for u in _units(r["text"], r["lang"])]
            voices = {r.get("speaker") for r in mine}
            entry = {
                "utterances": len(mine),
                "hours": round(sum(r.get("duration", 0.0) for r in mine) / 3600.0, 4),
                "unit": "char" if lang in UNSPACED_LANGUAGES else "word",
                "units": len(units),
                "distinct_units": len(set(units)),
                "voices": len(voices),
            }
            if split != "train":
                oov = sum(u not in known[lang] for u in units)
                entry["oov_rate"] = round(oov / max(len(units), 1), 4)
                entry["voices_in_train"] = len(voices & train_voices[lang])
            report.setdefault(split, {})[lang] = entry
    return report


def build_demo_corpus(out: Path, cfg: DemoConfig) -> Path:
    """Synthesize the corpus into `out` (skipped when `out` holds one of the same settings)."""
    marker = out / ".done.json"
    fingerprint = cfg.fingerprint()
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        log.info("demo corpus in %s is up to date", out)
        return out
    unknown = sorted(set(cfg.languages) - set(ESPEAK_VOICES))
    if unknown:
        raise ValueError(f"no demo voice for {unknown}; available: {sorted(ESPEAK_VOICES)}")
    shutil.rmtree(out, ignore_errors=True)
    for lang in cfg.languages:
        (out / "audio" / lang).mkdir(parents=True)
    planned = plan_utterances(cfg)
    jobs = [(spoken, voice, str(out / row["audio"])) for _, row, (spoken, voice) in planned]
    # consecutive utterances (mostly one language and split): few festival voices per batch
    batches = [jobs[i : i + BATCH] for i in range(0, len(jobs), BATCH)]
    start = time.perf_counter()
    durations = [d for batch in parallel_map(synthesize, batches, cfg.jobs) for d in batch]
    seconds = time.perf_counter() - start
    rows: dict[str, list[dict]] = {split: [] for split in CORPUS_SPLITS}
    for (split, row, _), duration in zip(planned, durations, strict=True):
        row["duration"] = round(duration, 4)
        rows[split].append(row)
    passages = plan_corpus_passages(rows, cfg)
    for split, planned_passages in passages.items():
        for passage in planned_passages:
            duration = join_passage(passage, out, out / passage.row["audio"])
            passage.row["duration"] = round(duration, 4)
        rows.setdefault(split, []).extend(p.row for p in planned_passages)
    for split, split_rows in rows.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
    report = corpus_report(rows)
    report["synthesis"] = {"seconds": round(seconds, 1), "jobs": cfg.jobs, "utterances": len(jobs)}
    write_json_atomic(out / "report.json", report)
    log.info(
        "demo corpus: %d utterances, %.2f h, synthesized in %.1f s with %d process(es) "
        "(%.1f s per 100 utterances)",
        len(jobs),
        sum(durations) / 3600.0,
        seconds,
        cfg.jobs,
        100.0 * seconds / max(len(jobs), 1),
    )
    for split in HELD_OUT_SPLITS:
        log.info(
            "demo corpus %s: out-of-vocabulary rate %s",
            split,
            ", ".join(f"{lang} {e['oov_rate']:.1%}" for lang, e in report[split].items()),
        )
    marker.write_text(json.dumps({"fingerprint": fingerprint, "config": asdict(cfg)}) + "\n")
    return out

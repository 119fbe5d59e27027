"""The espeak-ng demo corpus: audible 16 kHz speech, scripts per language, disjoint splits."""

from __future__ import annotations

import json
import random
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from data_prep.demo_corpus import (
    VOICES,
    DemoConfig,
    build_demo_corpus,
    make_sentence,
    plan_utterances,
)
from data_prep.prepare import prepare_demo

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")

SCRIPTS = {
    "zh": r"[\u4e00-\u9fff]+。",
    "ja": r"[\u3041-\u30ff]+。",
    "ko": r"[\uac00-\ud7a3 ]+[.?]",
    "ru": r"[А-ЯЁ][а-яё -]+[.?]",
    "en": r"[A-Z][a-z -]+[.?]",
}


@pytest.mark.parametrize("lang", sorted(VOICES))
def test_sentences_are_real_words_in_the_script_espeak_reads(lang):
    rng, cfg = random.Random(1), DemoConfig()
    for _ in range(5):
        text, spoken = make_sentence(lang, rng, cfg.vocabulary, cfg.words_per_sentence)
        if lang in SCRIPTS:
            assert re.fullmatch(SCRIPTS[lang], text), text
        if lang == "zh":  # spoken as pinyin with tone numbers
            assert re.fullmatch(r"([a-z]+[1-5] ?)+", spoken), spoken
        elif lang == "ja":
            assert spoken.replace(" ", "") + "。" == text
        else:
            assert spoken == text and 3 <= len(text.split()) <= 9


def test_more_training_data_keeps_the_held_out_set_and_extends_training():
    def plan(train: int) -> dict[str, list]:
        cfg = DemoConfig(languages=["en", "ko"], train_per_lang=train, valid_per_lang=4)
        out: dict[str, list] = {"train": [], "valid": []}
        for split, row, settings in plan_utterances(cfg):
            out[split].append((row, settings))
        return out

    small, large = plan(5), plan(12)
    assert small["valid"] == large["valid"]  # same sentences, voices, rates and pitches
    for lang in ("en", "ko"):
        few = [u for u in small["train"] if u[0]["lang"] == lang]
        many = [u for u in large["train"] if u[0]["lang"] == lang]
        assert len(few) == 5 and many[:5] == few
    held_out = {row["text"] for row, _ in large["valid"]}
    assert not held_out & {row["text"] for row, _ in large["train"]}


def read_rows(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def test_tiny_corpus_is_audible_16k_and_splits_are_disjoint(tmp_path, caplog):
    cfg = DemoConfig(languages=["zh", "ja"], train_per_lang=3, valid_per_lang=3, seed=5, jobs=1)
    root = build_demo_corpus(tmp_path / "demo", cfg)
    train, valid = read_rows(root, "train"), read_rows(root, "valid")
    assert len(train) == len(valid) == 6
    assert not {r["text"] for r in train} & {r["text"] for r in valid}
    for row in train + valid:
        wave, rate = sf.read(root / row["audio"], dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert wave.size / rate == pytest.approx(row["duration"], abs=1e-3)
        assert float(np.sqrt(np.mean(wave**2))) > 0.01  # speech, not silence
        chars = len(row["text"]) - 1  # without the final 。
        assert 0.05 < row["duration"] / chars < 0.6, row  # a plausible speaking rate
        assert row["speaker"].split("+")[0] in VOICES[row["lang"]]

    stamp = (root / ".done.json").stat().st_mtime_ns
    build_demo_corpus(tmp_path / "demo", cfg)
    assert (root / ".done.json").stat().st_mtime_ns == stamp  # cached
    build_demo_corpus(tmp_path / "demo", DemoConfig(**{**cfg.__dict__, "seed": 6}))
    assert read_rows(root, "train") != train  # other settings: rebuilt


def test_prepare_demo_runs_every_stage_once(tmp_path):
    out = prepare_demo(tmp_path / "data", ["en", "de"], 4, 2, vocab_size=320, seed=0, jobs=1)
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["languages"]["de"]["samples"] == 4
    assert index["splits"]["valid"]["languages"]["en"]["samples"] == 2
    assert (out / "tokenizer.model").is_file() and (out / "stats.json").is_file()
    done = {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()}
    prepare_demo(out, ["en", "de"], 4, 2, vocab_size=320, seed=0, jobs=1)
    assert done == {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()}

"""The synthesized demo corpus: real words in each language's script, held-out words and
voices, audible 16 kHz speech, splits that never meet, a human-speech set kept out of training."""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.adapters import asterisk
from data_prep.demo_corpus import DemoConfig, build_demo_corpus, corpus_report, plan_utterances
from data_prep.demo_fortunes import FORTUNE_PACKAGES, cookie_sentences, fortune_pools
from data_prep.demo_text import lexicon, make_sentence, word_count
from data_prep.demo_voices import ESPEAK_VOICES, Voice, synthesize
from data_prep.prepare import prepare_demo
from whisfusion.data.shards import iter_shard

needs_tts = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("espeak-ng", "flite", "festival")),
    reason="needs espeak-ng, flite and festival (make tts)",
)

needs_fortunes = pytest.mark.skipif(
    subprocess.run(
        ["dpkg-query", "-W", *FORTUNE_PACKAGES.values()], capture_output=True
    ).returncode,
    reason="needs Debian's fortune files (make tts)",
)

SCRIPTS = {
    "zh": r"[\u4e00-\u9fff0-9，]+[。？！]",
    "ja": r"[\u3041-\u30ff\u4e00-\u9fff0-9、]+[。？！]",
    "ko": r"[\uac00-\ud7a30-9, ]+[.?!]",
    "ru": r"[А-ЯЁ0-9][а-яё0-9, -]+[.?!]",
    "en": r"[A-Z0-9][a-z0-9, -]+[.?!]",
}


@pytest.mark.parametrize("lang", sorted(ESPEAK_VOICES))
def test_sentences_are_real_words_in_the_script_of_the_language(lang):
    rng, cfg = random.Random(1), DemoConfig()
    lex = lexicon(lang, cfg.vocabulary, cfg.seed)
    for _ in range(20):
        s = make_sentence(lang, rng, lex, cfg.words_per_sentence)
        if lang in SCRIPTS:
            assert re.fullmatch(SCRIPTS[lang], s.text), s.text
        if lang == "zh":  # spoken as pinyin with tone numbers
            assert re.fullmatch(r"([a-z]+[1-5][ ,]*)+[.?!]", s.spoken), s.spoken
        elif lang == "ja":  # spoken as hiragana
            assert re.fullmatch(r"[\u3041-\u30ff ,]+[.?!]", s.spoken), s.spoken
        else:
            low, high = cfg.words_per_sentence
            assert s.spoken == s.text and low <= len(s.text.split()) <= high + 1  # + a number
        assert set(s.words) <= set(lex.train)


def test_sentence_lengths_are_log_uniform_over_the_range():
    rng = random.Random(0)
    counts = [word_count(rng, 2, 20) for _ in range(4000)]
    assert min(counts) == 2 and max(counts) == 20
    short = sum(2 <= n <= 4 for n in counts)  # log-widths log(5/2) and log(21/10): similar shares
    long = sum(10 <= n <= 20 for n in counts)
    assert abs(short - long) < 0.15 * len(counts) and short + long > 0.6 * len(counts)
    with pytest.raises(ValueError, match="low <= high"):
        word_count(rng, 5, 3)


def test_zh_and_ja_transcripts_keep_hanzi_and_kanji():
    rng, cfg = random.Random(2), DemoConfig()
    for lang in ("zh", "ja"):
        lex = lexicon(lang, cfg.vocabulary, cfg.seed)
        texts = [make_sentence(lang, rng, lex, [3, 10]).text for _ in range(20)]
        assert sum(bool(re.search(r"[\u4e00-\u9fff]", t)) for t in texts) >= 15, texts


def test_thousands_of_words_with_held_out_words_apart():
    lex = lexicon("de", 8000, 0)
    assert len(lex.train) > 6000 and len(lex.valid) > 300 and len(lex.test) > 300
    assert not set(lex.train) & set(lex.valid) and not set(lex.train) & set(lex.test)
    assert not set(lex.valid) & set(lex.test)
    assert lex == lexicon("de", 8000, 0) and lex != lexicon("de", 8000, 1)


def test_a_fortune_cookie_gives_its_plain_sentences():
    cookie = (
        "\x1b[32m- Ma e' quello l'ufficio, perche' no?\x1b[m  Si', un po' di piu'.\n"
        '- Non ci sono "virgolette" qui. Questa frase invece e\' davvero troppo lunga per il\n'
        "corpus, perche' conta ben piu' di venti parole tra tutte quelle che si trovano qui.\n"
        "minuscola all'inizio. Fine -- davvero. Ecco...\n"
        "\t\t-- Douglas Adams, Guida galattica per gli autostoppisti.\n"
    )
    assert cookie_sentences(cookie, "it", (2, 20)) == [
        "Ma è quello l'ufficio, perché no?",
        "Sì, un po' di più.",
    ]
    assert cookie_sentences("It's 5 o'clock. Go!\n", "en", (2, 20)) == ["It's 5 o'clock."]
    assert cookie_sentences("Привет, мир! Hello world.\n", "ru", (2, 20)) == ["Привет, мир!"]


@needs_fortunes
def test_fortune_sentences_fill_half_of_each_split_and_keep_held_out_words_out_of_training():
    pools = fortune_pools("it", (2, 20), 0)
    assert len(pools.train) > 1000 and len(pools.valid) > 100 and len(pools.test) > 100
    assert not set(pools.train) & (set(pools.valid) | set(pools.test))
    assert not set(pools.valid) & set(pools.test)
    assert fortune_pools("fr", (2, 20), 0) is None  # Debian has no French fortunes
    cfg = DemoConfig(languages=["it", "fr"], train_per_lang=200, valid_per_lang=60)
    cfg.test_per_lang = 60
    rows: dict[tuple[str, str], list[str]] = {}
    for split, row, _ in plan_utterances(cfg):
        rows.setdefault((split, row["lang"]), []).append(row["text"])
    lex = lexicon("it", cfg.vocabulary, cfg.seed)
    kept_out = set(lex.valid) | set(lex.test)
    for split in ("train", "valid", "test"):
        real = [t for t in rows[split, "it"] if t in getattr(pools, split)]
        assert 0.3 < len(real) / len(rows[split, "it"]) < 0.7, (split, len(real))
        assert not any(t in set(pools.train) for t in rows[split, "fr"])
        if split == "train":
            assert all(kept_out.isdisjoint(re.findall(r"\w+", t.lower())) for t in real)
    only_real = plan_utterances(DemoConfig(**{**cfg.__dict__, "real_share": 1.0}))
    trained = [
        row["text"] for split, row, _ in only_real if split == "train" and row["lang"] == "it"
    ]
    assert set(trained) <= set(pools.train)  # every training sentence a fortune ...
    held = [row for split, row, _ in only_real if split != "train"]
    assert held == [
        row for split, row, _ in plan_utterances(cfg) if split != "train"
    ]  # ... same held-out sets
    assert DemoConfig(real_share=0.0).fingerprint() != DemoConfig().fingerprint()
    with pytest.raises(ValueError, match="real_share"):
        DemoConfig(real_share=1.5)


def plan(train: int, languages=("en", "ko", "zh", "ru")) -> dict[str, list]:
    cfg = DemoConfig(languages=list(languages), train_per_lang=train, valid_per_lang=10)
    cfg.test_per_lang = 12
    out: dict[str, list] = {"train": [], "valid": [], "test": []}
    for split, row, settings in plan_utterances(cfg):
        out[split].append((row, settings))
    return out


@needs_fortunes
def test_held_out_splits_have_unseen_words_and_voices_and_a_fixed_size():
    small, large = plan(20), plan(60)
    for split in ("valid", "test"):
        assert small[split] == large[split]  # same sentences and voices
    for lang in ("en", "ko", "zh", "ru"):
        few = [u for u in small["train"] if u[0]["lang"] == lang]
        many = [u for u in large["train"] if u[0]["lang"] == lang]
        assert len(few) == 20 and many[:20] == few
    rows = {split: [{**row, "duration": 1.0} for row, _ in items] for split, items in large.items()}
    report = corpus_report(rows)
    for split in ("valid", "test"):
        for lang in ("en", "ko", "zh", "ru"):
            assert report[split][lang]["utterances"] == (10 if split == "valid" else 12)
            assert report[split][lang]["oov_rate"] > 0.0
            assert report[split][lang]["voices_in_train"] == 0
    train_voices = {row["speaker"] for row, _ in large["train"]}
    held_voices = {row["speaker"] for split in ("valid", "test") for row, _ in large[split]}
    assert held_voices and not held_voices & train_voices
    engines = {split: {row["speaker"].split(":")[0] for row, _ in large[split]} for split in large}
    assert "flite" in engines["train"] and "festival" in engines["test"] | engines["valid"]
    texts = {split: {row["text"] for row, _ in large[split]} for split in large}
    assert not texts["train"] & (texts["valid"] | texts["test"])
    assert report["test"]["zh"]["unit"] == "char" and report["test"]["en"]["unit"] == "word"


def test_oov_rate_counts_units_no_training_transcript_holds():
    rows = {
        "train": [{"text": "Ein Hund.", "lang": "de", "speaker": "a", "duration": 1.0}],
        "test": [{"text": "Ein Hund, eine Katze!", "lang": "de", "speaker": "b", "duration": 2.0}],
    }
    report = corpus_report(rows)
    assert report["test"]["de"]["oov_rate"] == 0.5  # eine, katze of ein hund eine katze
    assert report["test"]["de"]["voices_in_train"] == 0
    assert report["train"]["de"]["distinct_units"] == 2


def read_rows(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


@needs_tts
def test_tiny_corpus_is_audible_16k_and_splits_are_disjoint(tmp_path):
    cfg = DemoConfig(languages=["zh", "ja"], train_per_lang=3, valid_per_lang=2, seed=5, jobs=1)
    cfg.test_per_lang = 2
    cfg.train_passages_per_lang = 1
    root = build_demo_corpus(tmp_path / "demo", cfg)
    rows = {split: read_rows(root, split) for split in ("train", "valid", "test", "long")}
    passages = {split: [r for r in rows[split] if "-passage-" in r["id"]] for split in rows}
    assert [len(r) for r in rows.values()] == [8, 4, 4, 2]  # train: 3 + 1 passage per language
    assert [len(p) for p in passages.values()] == [2, 0, 0, 2]
    texts = [{r["text"] for r in rows[split]} for split in ("train", "valid", "test")]
    assert not texts[0] & texts[1] and not texts[0] & texts[2]
    for row in [r for split_rows in rows.values() for r in split_rows]:
        wave, rate = sf.read(root / row["audio"], dtype="float32")
        assert rate == 16000 and wave.ndim == 1
        assert wave.size / rate == pytest.approx(row["duration"], abs=1e-3)
        assert float(np.sqrt(np.mean(wave**2))) > 0.01  # speech, not silence
        chars = len(row["text"]) - 1  # without the final mark
        assert 0.05 < row["duration"] / chars < 0.6, row  # a plausible speaking rate
        for speaker in row["speaker"].split(" + "):
            engine, voice = speaker.split(":")
            assert engine == "espeak"
    valid_texts = {r["text"] for r in rows["valid"]}
    for row in passages["long"]:  # valid's utterances, joined without a space in zh / ja
        assert any(row["text"].startswith(t) for t in valid_texts)
        assert " " not in row["text"]
    report = json.loads((root / "report.json").read_text())
    assert report["test"]["zh"]["utterances"] == 2
    assert report["long"]["ja"]["utterances"] == 1 and report["long"]["ja"]["voices_in_train"] == 0

    stamp = (root / ".done.json").stat().st_mtime_ns
    build_demo_corpus(tmp_path / "demo", cfg)
    assert (root / ".done.json").stat().st_mtime_ns == stamp  # cached
    build_demo_corpus(tmp_path / "demo", DemoConfig(**{**cfg.__dict__, "seed": 6}))
    assert read_rows(root, "train") != rows["train"]  # other settings: rebuilt


@needs_tts
def test_every_engine_speaks_audible_16k_audio(tmp_path):
    batch = [
        ("Hello, this is 25 words.", Voice("espeak", "en-us+m3", 160, 50), "a.flac"),
        ("Hello, this is 25 words.", Voice("flite", "slt", 140, 50), "b.flac"),
        ("Perché oggi è così bello?", Voice("festival", "pc_diphone", 190, 50), "c.flac"),
        ("Сегодня хороший день.", Voice("festival", "msu_ru_nsh_clunits", 160, 50), "d.flac"),
    ]
    batch = [(text, voice, str(tmp_path / name)) for text, voice, name in batch]
    durations = synthesize(batch)
    for (_, _, path), duration in zip(batch, durations, strict=True):
        wave, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and wave.size / rate == pytest.approx(duration, abs=1e-3)
        assert 0.7 < duration < 5.0 and float(np.sqrt(np.mean(wave**2))) > 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "b.flac", "c.flac", "d.flac"]


ASTERISK_TXT = """\ufeff; Core Asterisk Sounds in Italian

activated: Attivato.
ascending-2tone: [toni ascendenti]
at-tone-time-exactly: Al segnale acustico, il tempo sar? esattamente..
digits/ore-1900: millenovecento... (data)
vm-extension: Interno?
digits/2: due
missing-file: Nessun file.
"""


def fake_asterisk(root: Path, lang: str, text: str = ASTERISK_TXT, gz: bool = True) -> Path:
    """The layout of asterisk-core-sounds-<lang> under `root`: transcripts and 8 kHz WAV."""
    doc = root / "usr/share/doc" / f"asterisk-core-sounds-{lang}"
    doc.mkdir(parents=True)
    name = doc / f"core-sounds-{lang}.txt"
    if gz:
        with gzip.open(name.with_suffix(".txt.gz"), "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        name.write_text(text, encoding="utf-8")
    sounds = root / "usr/share/asterisk/sounds" / lang
    rng = np.random.default_rng(0)
    for prompt in ["activated", "ascending-2tone", "at-tone-time-exactly", "vm-extension"] + [
        "digits/ore-1900",
        "digits/2",
    ]:
        path = sounds / f"{prompt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, 0.1 * rng.standard_normal(8000).astype(np.float32), 8000)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_asterisk_adapter_keeps_clean_prompts_with_audio(tmp_path, gz):
    root = fake_asterisk(tmp_path, "it", gz=gz)
    records = list(asterisk(root, "it"))
    assert [(r["id"], r["text"]) for r in records] == [
        ("asterisk-it-activated", "Attivato."),
        ("asterisk-it-vm-extension", "Interno?"),
        ("asterisk-it-digits_2", "due"),
    ]
    assert all(r["lang"] == "it" and r["speaker"] == "asterisk-it" for r in records)
    assert records[2]["audio"].endswith("sounds/it/digits/2.wav")


def test_asterisk_adapter_names_the_missing_package(tmp_path):
    with pytest.raises(ValueError, match="asterisk-core-sounds-ru"):
        list(asterisk(tmp_path, "ru"))


def fail(path: str, err: Exception) -> None:
    raise AssertionError(f"{path}: {err}")


def shard_ids(out: Path, split: str) -> set[str]:
    index = json.loads((out / "index.json").read_text())
    return {
        raw["__key__"]
        for entry in index["splits"][split]["shards"]
        for raw in iter_shard(str(out / entry["path"]), fail)
    }


@needs_tts
def test_prepare_demo_runs_every_stage_once_and_keeps_human_speech_out_of_training(tmp_path):
    human = fake_asterisk(tmp_path / "root", "it")
    out = prepare_demo(
        tmp_path / "data",
        ["en", "it"],
        4,
        2,
        320,
        0,
        test_per_lang=3,
        jobs=1,
        human_root=human,
        train_passages=1,
    )
    index = json.loads((out / "index.json").read_text())
    assert index["splits"]["train"]["languages"]["it"]["samples"] == 4 + 1  # and a passage
    assert index["splits"]["long"]["languages"]["en"]["samples"] == 1  # valid's 2 joined
    assert index["splits"]["valid"]["languages"]["en"]["samples"] == 2
    assert index["splits"]["test"]["languages"]["en"]["samples"] == 3
    assert index["splits"]["human"]["languages"] == {
        "it": {"shards": 1, "samples": 3, "hours": pytest.approx(3 / 3600)}
    }
    human_ids = shard_ids(out, "human")
    assert human_ids and all(i.startswith("asterisk-it-") for i in human_ids)
    assert not human_ids & shard_ids(out, "train")
    train_text = (out / "manifests" / "train_raw.jsonl").read_text()
    assert "asterisk" not in train_text and "Attivato" not in train_text
    for name in ("tokenizer.model", "stats.json", "language_tokens.json"):
        assert (out / name).is_file()
    report = json.loads((out / "reports" / "corpus.json").read_text())
    assert set(report) == {"train", "valid", "test", "human", "long"}
    assert report["human"]["it"]["utterances"] == 3 and "oov_rate" in report["human"]["it"]
    done = {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()}
    prepare_demo(
        out, ["en", "it"], 4, 2, 320, 0, test_per_lang=3, jobs=1, human_root=human, train_passages=1
    )
    assert done == {p.name: p.stat().st_mtime_ns for p in (out / ".done").iterdir()}


@needs_tts
def test_prepare_demo_without_the_asterisk_packages_has_no_human_split(tmp_path, caplog):
    out = prepare_demo(
        tmp_path / "data", ["en", "it"], 3, 2, 300, 0, test_per_lang=2, jobs=1, human_root=tmp_path
    )
    assert json.loads((out / "index.json").read_text())["splits"]["human"]["shards"] == []
    assert "apt-get install asterisk-core-sounds-it" in caplog.text


@pytest.mark.parametrize("lang", ["it", "ru"])
@pytest.mark.skipif(
    not Path("/usr/share/doc/asterisk-core-sounds-it").is_dir(),
    reason="needs the asterisk-core-sounds-it / -ru packages (make tts)",
)
def test_installed_asterisk_packages_give_hundreds_of_clean_prompts(lang):
    records = list(asterisk(Path("/"), lang))
    assert len(records) > 500
    assert len({r["id"] for r in records}) == len(records)
    assert all(Path(r["audio"]).is_file() for r in records)
    assert not [r for r in records if re.search(r"[\[\]<>()]", r["text"])]
    info = sf.info(records[0]["audio"])
    assert info.channels == 1 and info.duration > 0.2

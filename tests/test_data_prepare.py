"""The stage-gated driver on a small JSONL corpus: outputs, drops, re-runs, stage ranges."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from data_fixtures import tone_corpus, write_audio

from data_prep import stages
from data_prep.prepare import main, run
from data_prep.settings import PrepSettings, Source
from data_prep.stages import MAX_CHARACTER_COVERAGE, STAGES, PrepError, balanced_lines
from whisfusion.data.manifest import read_manifest
from whisfusion.language_vocab import LanguageVocabulary
from whisfusion.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


def add_rows(root: Path, split: str, rows: list[dict]) -> None:
    with (root / f"{split}.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    tone_corpus(root, {"en": (10, 3), "de": (6, 3)})
    write_audio(root / "audio" / "long.wav", 3.5, seed=99)
    write_audio(root / "audio" / "stereo44k.wav", 1.0, rate=44100, channels=2, seed=98)
    add_rows(
        root,
        "train",
        [
            {"id": "empty", "audio": "audio/en-train-0.wav", "text": " ", "lang": "en"},
            {"id": "french", "audio": "audio/en-train-0.wav", "text": "Oui.", "lang": "fr"},
            {"id": "long", "audio": "audio/long.wav", "text": "Too long.", "lang": "en"},
            {"id": "gone", "audio": "audio/none.wav", "text": "Gone.", "lang": "de"},
            {"id": "stereo", "audio": "audio/stereo44k.wav", "text": "Two ears.", "lang": "en"},
        ],
    )
    # far more text than one second of audio can carry: does not fit its canvas
    long_text = " ".join(["extraordinarily"] * 40)
    add_rows(
        root,
        "valid",
        [{"id": "chatty", "audio": "audio/en-valid-0.wav", "text": long_text, "lang": "en"}],
    )
    return root


def settings(corpus: Path, out: Path, **kw) -> PrepSettings:
    base = dict(
        out=out,
        sources=[Source("jsonl", corpus, ["train"], ["valid"])],
        languages=["en", "de"],
        vocab_size=320,
        max_duration=3.0,
        shard_samples=4,
        jobs=1,
    )
    return PrepSettings(**{**base, **kw})


def test_all_stages(corpus, tmp_path):
    out = tmp_path / "data"
    reports = run(settings(corpus, out))
    assert list(reports) == [name for name, _ in STAGES]

    dropped = reports["manifest"]["dropped"]
    assert dropped == {
        "empty_text": 1,
        "unknown_language:fr": 1,
        "too_long": 1,
        "undecodable_audio": 1,
    }
    assert reports["filter"]["dropped"] == {"canvas_overflow:valid:en": 1}

    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["tokens_per_second"]) == {"all", "en", "de"}
    assert stats["r_max"] >= stats["tokens_per_second"]["all"]["p99"]
    assert stats["r_max"] * 2 == math.ceil(stats["r_max"] * 2)
    assert (out / "tokenizer.model").is_file()
    # every token of every kept training transcript, counted under its language
    tok = Tokenizer.from_file(out / "tokenizer.model")
    vocab = LanguageVocabulary.from_file(
        out / "language_tokens.json", tok.languages, tok.vocab_size
    )
    for lang in ("en", "de"):
        expected = Counter(
            i
            for u in read_manifest(out / "manifests" / "train_raw.jsonl")
            if u.lang == lang
            for i in tok.encode(u.text)
        )
        row = vocab.counts[tok.languages.index(lang)]
        assert {int(i): int(row[i]) for i in row.nonzero().flatten()} == dict(expected)
        assert stats["tokens_used"][lang] == len(expected)

    index = json.loads((out / "index.json").read_text())
    for split in ("train", "valid"):
        kept = {
            lang: list(read_manifest(out / "manifests" / split / f"{lang}.jsonl"))
            for lang in ("en", "de")
        }
        shards = index["splits"][split]["shards"]
        for lang, utts in kept.items():
            mine = [s for s in shards if s["languages"] == [lang]]
            assert [s["samples"] for s in mine][:-1] == [4] * (len(mine) - 1)  # equal counts
            assert sum(s["samples"] for s in mine) == len(utts)
            totals = index["splits"][split]["languages"][lang]
            assert totals["samples"] == len(utts)
            # hours from the written 16 kHz audio, which the manifest durations match
            assert totals["hours"] == pytest.approx(sum(u.duration for u in utts) / 3600, rel=1e-3)
            for s in mine:
                assert (out / s["path"]).is_file() and s["path"].startswith(
                    f"shards/{split}/{lang}-"
                )
    stereo = next(u for u in read_manifest(out / "manifests/train/en.jsonl") if u.id == "stereo")
    assert stereo.duration == pytest.approx(1.0)
    assert "throughput" not in reports["shards"] and reports["shards"]["hours_per_cpu_second"] > 0


def test_rerun_skips_done_stages_and_redoes_changed_ones(corpus, tmp_path, caplog):
    out = tmp_path / "data"
    s = settings(corpus, out)
    run(s)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "reports").iterdir()}
    caplog.set_level(logging.INFO, logger="data_prep")
    run(s)
    assert caplog.text.count("skipped") == len(STAGES)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "reports").iterdir()}

    run(settings(corpus, out, shard_samples=3))  # only the shard settings changed
    now = {p.name: p.stat().st_mtime_ns for p in (out / "reports").iterdir()}
    assert [n for n in sorted(now) if now[n] != stamps[n]] == ["shards.json", "verify.json"]
    index = json.loads((out / "index.json").read_text())
    sizes = [s["samples"] for s in index["splits"]["train"]["shards"]]
    assert max(sizes) == 3
    # shards of the previous run that this one did not write are gone
    on_disk = {f"shards/train/{p.name}" for p in (out / "shards" / "train").glob("*.tar")}
    assert on_disk == {s["path"] for s in index["splits"]["train"]["shards"]}

    # a new tokenizer model type redoes the tokenizer and every stage after it
    run(settings(corpus, out, shard_samples=3, model_type="char"))
    then = {p.name: p.stat().st_mtime_ns for p in (out / "reports").iterdir()}
    assert [n for n in sorted(then) if then[n] != now[n]] == [
        "filter.json",
        "shards.json",
        "tokenizer.json",
        "verify.json",
    ]
    assert json.loads((out / "stats.json").read_text())["tokenizer"]["model_type"] == "char"


def test_tokenizer_settings_come_from_the_run_config(corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model:\n  tokenizer:\n    model_type: char\n    languages: [en, de]\n"
        "data:\n  max_duration: 3.0\n"
    )
    out = tmp_path / "data"
    args = ["jsonl:" + str(corpus), "--out", str(out), "--config", str(config), "--jobs", "1"]
    main(args + ["--stop-stage", "1"])
    stats = json.loads((out / "stats.json").read_text())["tokenizer"]
    assert stats["model_type"] == "char" and stats["character_coverage"] == MAX_CHARACTER_COVERAGE
    tok = Tokenizer.from_file(out / "tokenizer.model")
    text = next(read_manifest(out / "manifests" / "train_raw.jsonl")).text
    assert len(tok.encode(text)) == len(text)  # one token per character


def test_unknown_model_type_fails_before_any_stage(corpus, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(PrepError, match="model_type must be one of .*; got 'word'"):
        run(settings(corpus, out, model_type="word"))
    assert not out.exists()


def test_stage_range_and_order(corpus, tmp_path):
    out = tmp_path / "data"
    args = [
        "jsonl:" + str(corpus),
        "--out",
        str(out),
        "--languages",
        "en,de",
        "--vocab-size",
        "320",
        "--max-duration",
        "3",
        "--jobs",
        "1",
        "--shard-samples",
        "4",
    ]
    main(args + ["--stop-stage", "1"])
    assert sorted(p.stem for p in (out / ".done").iterdir()) == ["manifest", "tokenizer"]
    assert not (out / "index.json").exists()
    with pytest.raises(SystemExit):  # stage 2 is not done: cannot start at 3
        main(args + ["--stage", "3"])
    main(args + ["--stage", "2", "--stop-stage", "2"])
    main(args + ["--stage", "3"])
    assert sorted(p.stem for p in (out / ".done").iterdir()) == [n for n, _ in sorted(STAGES)]


def test_verify_names_a_broken_shard(corpus, tmp_path):
    out = tmp_path / "data"
    s = settings(corpus, out)
    run(s)
    index = json.loads((out / "index.json").read_text())
    victim = out / index["splits"]["train"]["shards"][0]["path"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(PrepError, match=victim.name):
        run(s, stage=4, redo=True)


@pytest.mark.slow  # starts worker processes for three stages (seconds each on 2 cores)
def test_parallel_workers_give_the_same_shards(corpus, tmp_path):
    one = run(settings(corpus, tmp_path / "one"))
    two = run(settings(corpus, tmp_path / "two", jobs=2))
    assert one["shards"]["splits"] == two["shards"]["splits"]
    a = json.loads((tmp_path / "one" / "index.json").read_text())
    b = json.loads((tmp_path / "two" / "index.json").read_text())
    assert a == b


def test_balanced_lines_repeat_small_languages(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"id": f"e{i}", "audio": "x", "duration": 1, "text": f"e{i}", "lang": "en"}
        for i in range(7)
    ]
    rows += [{"id": "d0", "audio": "x", "duration": 1, "text": "d0", "lang": "de"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines, per_lang = balanced_lines(manifest, ["en", "de"], per_language=5, seed=0)
    assert per_lang == 5
    assert sorted(lines).count("d0") == 5
    assert (
        len([x for x in lines if x.startswith("e")])
        == 5
        == len(set(x for x in lines if x[0] == "e"))
    )


def test_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "prepare.py"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "--stop-stage" in done.stdout and "librispeech" in done.stdout


def test_flac_sources_at_16k_are_copied_sample_exactly(tmp_path):
    root = tmp_path / "c"
    data = write_audio(root / "a.flac", 1.0, fmt="FLAC", seed=3)
    add_rows(root, "train", [{"id": "a", "audio": "a.flac", "text": "The cat.", "lang": "en"}])
    add_rows(root, "valid", [{"id": "b", "audio": "a.flac", "text": "The mat.", "lang": "en"}])
    out = tmp_path / "data"
    run(settings(root, out, languages=["en"], vocab_size=300))
    import io
    import tarfile

    with tarfile.open(out / "shards/train/en-000000.tar") as tar:
        flac = tar.extractfile("a.flac").read()
    decoded, rate = sf.read(io.BytesIO(flac), dtype="float32")
    source, _ = sf.read(root / "a.flac", dtype="float32")
    assert rate == 16000 and (decoded == source).all() and data.shape == source.shape


def test_training_shards_are_cut_for_the_streams():
    s = PrepSettings(out=Path("/tmp/unused"), sources=[], shard_size_mb=1000.0, streams=512)
    per_utt = 10.0  # seconds
    for hours, expect_streams in [(2000.0, True), (30.0, False)]:
        utts = int(hours * 3600 / per_utt)
        n = stages.samples_per_shard(s, hours, utts, "train")
        shards = math.ceil(utts / n)
        shard_mb = n * per_utt * stages.FLAC_BYTES_PER_SECOND / 1e6
        if expect_streams:  # a large language: one shard per stream at least
            assert shards >= 512 and shard_mb <= 1000.0
        else:  # a small one: as many as the smallest shard size allows
            assert shards < 512 and shard_mb == pytest.approx(stages.MIN_SHARD_MB, rel=0.01)
        # validation shards keep the size target; streams 0 turns the rule off
        assert stages.samples_per_shard(s, hours, utts, "valid") >= n
    s.streams = 0
    assert stages.samples_per_shard(s, 2000.0, 720_000, "train") == round(1000e6 / 200_000)

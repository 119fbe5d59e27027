"""Shards -> batches: round trip, rank/worker splitting, language mixing, bad samples."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from data_fixtures import tone_corpus

from data_prep.prepare import run
from data_prep.settings import PrepSettings, Source
from whisfusion.canvas import canvas_length
from whisfusion.config import CanvasConfig, DataConfig
from whisfusion.data import stats as S
from whisfusion.data.datamodule import WhisfusionDataModule, warn_few_shards
from whisfusion.data.manifest import read_manifest
from whisfusion.data.shards import build_index, write_json_atomic
from whisfusion.data.stream import (
    bucket_batches,
    language_weights,
    plan_validation,
)
from whisfusion.tokenizer import Tokenizer

torch.set_num_threads(1)


def prepared(root: Path, per_lang: dict[str, tuple[int, int]]) -> Path:
    """A data directory of tone utterances (train, valid counts per language), 3 per shard."""
    tone_corpus(root / "corpus", per_lang)
    settings = PrepSettings(
        out=root / "data",
        sources=[Source("jsonl", root / "corpus", ["train"], ["valid"])],
        languages=list(per_lang),
        vocab_size=320,
        shard_samples=3,
        jobs=1,
    )
    run(settings)
    return root / "data"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return prepared(tmp_path_factory.mktemp("stream"), {"en": (12, 7), "de": (9, 6)})


def canvas_cfg(root: Path) -> CanvasConfig:
    return CanvasConfig(r_max=json.loads((root / "stats.json").read_text())["r_max"])


def module(root: Path, rank=0, world_size=1, **data_kw) -> WhisfusionDataModule:
    cfg = DataConfig(root=str(root), **{"num_workers": 0, "shuffle_buffer": 8, **data_kw})
    tok = Tokenizer.from_file(root / "tokenizer.model")
    dm = WhisfusionDataModule(cfg, canvas_cfg(root), tok, rank=rank, world_size=world_size)
    dm.setup("fit")
    return dm


def valid_manifest(root: Path) -> dict:
    return {
        u.id: u
        for lang in ("en", "de")
        for u in read_manifest(root / f"manifests/valid/{lang}.jsonl")
    }


def test_round_trip_every_sample_once_and_intact(data):
    dm = module(data, batch_size=4)
    tok = dm.decoder.tokenizer
    expected = valid_manifest(data)
    seen = []
    for batch in dm.val_dataloader():
        b = len(batch["ids"])
        assert batch["audio"].shape[0] == b and batch["tokens"].shape[0] == b
        for i, utt_id in enumerate(batch["ids"]):
            if batch["dup"][i]:
                continue
            seen.append(utt_id)
            utt = expected[utt_id]
            assert batch["texts"][i] == utt.text and batch["langs"][i] == utt.lang
            n = int(batch["audio_lens"][i])
            source, rate = sf.read(utt.audio, dtype="float32")
            assert rate == 16000 and n == source.size
            assert torch.equal(batch["audio"][i, :n], torch.from_numpy(source))
            assert not batch["audio"][i, n:].any()
            assert batch["durations"][i] == pytest.approx(utt.duration, abs=1e-4)
            # the target canvas is [lang] text eos..., as long as the duration rule says
            length = canvas_length(float(batch["durations"][i]), dm.decoder.canvas_cfg)
            assert int(batch["canvas_valid"][i].sum()) == length
            canvas = batch["tokens"][i, :length].tolist()
            assert canvas[0] == tok.lang_id(utt.lang) and canvas[-1] == tok.eos_id
            assert tok.decode(canvas) == utt.text
    assert sorted(seen) == sorted(expected)


def val_pass(root, rank, world_size, workers, **kw):
    dm = module(root, rank, world_size, num_workers=workers, **kw)
    return list(dm.val_dataloader())


@pytest.mark.parametrize("world_size, batch_size", [(2, 4), (3, 5)])
def test_ranks_and_workers_split_validation_exactly(data, world_size, batch_size):
    expected = set(valid_manifest(data))
    per_rank = [val_pass(data, r, world_size, 2, batch_size=batch_size) for r in range(world_size)]
    assert len({len(batches) for batches in per_rank}) == 1  # equal step counts
    real = [
        [i for b in batches for i, d in zip(b["ids"], b["dup"], strict=True) if not d]
        for batches in per_rank
    ]
    for ids in real:
        assert len(ids) == len(set(ids))
    union = [i for ids in real for i in ids]
    assert len(union) == len(set(union)) and set(union) == expected  # disjoint, complete
    assert max(len(ids) for ids in real) - min(len(ids) for ids in real) <= 1  # balanced


def test_short_ranks_get_flagged_repeats():
    positions = [("s.tar", i) for i in range(3)]
    plans = [plan_validation(positions, r, 4, batch_size=2) for r in range(4)]
    assert {len(p) for p in plans} == {1}
    assert plans[3] == [[]]  # filled by the stream with a dup=True repeat


def test_rank_without_samples_repeats_one_flagged_dup(data):
    dm = module(data, val_max_per_language=1)  # 2 utterances for 3 ranks
    tok_batches = [
        list(module(data, r, 3, val_max_per_language=1).val_dataloader()) for r in range(3)
    ]
    assert [len(b) for b in tok_batches] == [1, 1, 1]
    last = tok_batches[2][0]
    assert last["dup"].tolist() == [True]
    assert last["ids"][0] in {tok_batches[0][0]["ids"][0], tok_batches[1][0]["ids"][0]}
    assert dm.cfg.val_max_per_language == 1


def train_ids(dm, steps):
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(steps)]


def test_training_streams_differ_by_rank_and_resume_but_repeat_by_seed(data):
    steps = 6
    a0 = train_ids(module(data, 0, 2, batch_size=2), steps)
    a1 = train_ids(module(data, 1, 2, batch_size=2), steps)
    assert len(a0) == len(a1) == steps
    again = train_ids(module(data, 0, 2, batch_size=2), steps)
    assert [b["ids"] for b in again] == [b["ids"] for b in a0]
    assert [b["ids"] for b in a1] != [b["ids"] for b in a0]
    resumed = module(data, 0, 2, batch_size=2)
    resumed.load_state_dict(module(data, 0, 2).state_dict())
    assert resumed.resume_count == 1
    assert [b["ids"] for b in train_ids(resumed, steps)] != [b["ids"] for b in a0]


def test_augmentation_changes_audio_not_the_samples_drawn(data):
    steps = 6
    plain = train_ids(module(data, batch_size=2), steps)
    phoned = train_ids(module(data, batch_size=2, augment_telephone=0.5), steps)
    assert [b["ids"] for b in phoned] == [b["ids"] for b in plain]
    flags = torch.cat([b["augmented"] for b in phoned])
    assert 0 < int(flags.sum()) < len(flags)
    assert not torch.cat([b["augmented"] for b in plain]).any()
    for a, b in zip(plain, phoned, strict=True):
        assert torch.equal(a["tokens"], b["tokens"])
        for row, aug in enumerate(b["augmented"].tolist()):
            assert torch.equal(a["audio"][row], b["audio"][row]) != aug
    assert sum(b["stats"].get(S.AUGMENTED, 0) for b in phoned) == int(flags.sum())
    again = train_ids(module(data, batch_size=2, augment_telephone=0.5), steps)
    assert all(torch.equal(a["audio"], b["audio"]) for a, b in zip(phoned, again, strict=True))


def test_speed_augmentation_reaches_batches_with_canvases_of_the_new_durations(data):
    steps = 6
    plain = train_ids(module(data, batch_size=2), steps)
    played = train_ids(module(data, batch_size=2, augment_speed=1.0), steps)
    assert [b["ids"] for b in played] == [b["ids"] for b in plain]
    cfg, eos = canvas_cfg(data), Tokenizer.from_file(data / "tokenizer.model").eos_id
    for a, b in zip(plain, played, strict=True):
        for row, aug in enumerate(b["augmented"].tolist()):
            seconds = float(b["durations"][row])
            assert (abs(seconds - float(a["durations"][row])) > 0.05) == aug
            width = int(b["canvas_valid"][row].sum())
            assert width == canvas_length(seconds, cfg)
            text = a["tokens"][row][a["canvas_valid"][row]]
            n = int((text != eos).sum())
            assert torch.equal(b["tokens"][row][:n], text[:n])  # the same words
    assert torch.cat([b["augmented"] for b in played]).any()


def test_validation_is_never_augmented(data):
    dm = module(data, batch_size=4, augment_telephone=1.0, augment_speed=1.0)
    batches = list(dm.val_dataloader())
    assert batches and not any(b["augmented"].any() for b in batches)


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> Path:
    """2 languages x 3 training shards of 3 samples."""
    return prepared(tmp_path_factory.mktemp("three"), {"en": (9, 1), "de": (9, 1)})


def test_every_sample_read_is_trained_on_with_more_streams_than_shards(three_shards):
    # 2 ranks x 4 workers = 8 streams on 3 shards per language: each stream still keeps every
    # sample it reads (a per-stream key split would read about 8 samples per sample kept)
    langs = json.loads((three_shards / "index.json").read_text())["splits"]["train"]["languages"]
    assert {lang: t["shards"] for lang, t in langs.items()} == {"en": 3, "de": 3}
    probe = Path(__file__).with_name("stream_reads_probe.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, str(probe), str(three_shards), "2", "4", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["yielded"] >= 2 * 40
    # what is read but not yet delivered waits in the shuffle buffers and prefetched batches
    assert 1.0 <= got["from_tars"] / got["yielded"] < 1.6, got
    assert got["read"] <= got["from_tars"]
    # streams draw with replacement: the ranks overlap, and both see both languages
    assert all({i.split("-")[0] for i in ids} >= {"en", "de"} for ids in got["ids"]), got["ids"]


def test_start_up_warns_of_languages_with_fewer_shards_than_streams(caplog):
    shards = {"en": [f"en{i}" for i in range(8)], "de": ["de0", "de1"], "fr": ["fr0"]}
    weights = {"en": 0.5, "de": 0.5, "fr": 0.0}
    assert warn_few_shards(shards, weights, 8) == ["de"]  # fr is never drawn
    assert "de (2)" in caplog.text and "--streams 8" in caplog.text
    assert warn_few_shards(shards, weights, 2) == []


def test_training_with_two_workers_keeps_going(data):
    dm = module(data, 1, 2, batch_size=3, num_workers=2)
    batches = list(islice(iter(dm.train_dataloader()), 12))
    assert len(batches) == 12 and all(1 <= len(b["ids"]) <= 3 for b in batches)


def test_language_mixing_follows_weights(data):
    dm = module(data, batch_size=8, language_weights={"en": 0.8, "de": 0.2}, shuffle_buffer=4)
    langs = Counter(lang for b in train_ids(dm, 100) for lang in b["langs"])
    share = langs["en"] / sum(langs.values())
    assert abs(share - 0.8) < 0.05, langs


def test_language_weights_temperature():
    hours = {"en": 100.0, "de": 25.0}
    assert language_weights(hours, 1.0, {}) == pytest.approx({"en": 0.8, "de": 0.2})
    assert language_weights(hours, 0.5, {}) == pytest.approx({"en": 2 / 3, "de": 1 / 3})
    assert language_weights(hours, 0.0, {}) == pytest.approx({"en": 0.5, "de": 0.5})
    assert language_weights(hours, 1.0, {"de": 1.0}) == {"en": 0.0, "de": 1.0}
    with pytest.raises(ValueError, match="fr"):
        language_weights(hours, 1.0, {"fr": 1.0})


class Dur:
    def __init__(self, duration):
        self.duration = duration


def test_bucket_batches_group_durations_and_cap_seconds():
    durations = [1.0, 9.0, 2.0, 10.0, 3.0, 12.0, 1.5, 2.5]
    batches = list(bucket_batches([Dur(d) for d in durations], [4.0, 30.0], 3, 0))
    assert [[e.duration for e in b] for b in batches] == [[1.0, 2.0, 3.0], [9.0, 10.0, 12.0]]
    capped = list(bucket_batches([Dur(d) for d in durations], [4.0, 30.0], 8, 20.0))
    for b in capped:
        assert len(b) * max(e.duration for e in b) <= 20.0 or len(b) == 1


# ---------------------------------------------------------------------------- bad samples


def flac(seconds=0.5, rate=16000, channels=1, fmt="FLAC", subtype="PCM_16", fill=None):
    n = int(seconds * rate)
    wave = 0.1 * np.sin(np.arange(n) * 0.05).astype(np.float32)
    if fill is not None:
        wave[n // 2] = fill
    data = np.stack([wave] * channels, 1) if channels > 1 else wave
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def meta(key, text="The cat.", lang="en"):
    return json.dumps({"id": key, "lang": lang, "text": text, "duration": 0.5}).encode()


BAD = {
    S.UNDECODABLE_AUDIO: {"flac": b"not audio at all"},
    S.EMPTY_TEXT: {"text": "  "},
    S.BAD_SAMPLE_RATE: {"flac": flac(rate=8000)},
    S.BAD_CHANNELS: {"flac": flac(channels=2)},
    S.NAN_AUDIO: {"flac": flac(fmt="WAV", subtype="FLOAT", fill=np.nan)},
    S.TOO_LONG: {"flac": flac(seconds=2.5)},
    S.CANVAS_OVERFLOW: {"text": "The cat sat on the mat. " * 12},
    S.UNKNOWN_LANGUAGE: {"lang": "xx"},
    S.BAD_JSON: {"json": b"{not json"},
    S.MISSING_FIELD: {"flac": None},
}


@pytest.fixture
def broken(data, tmp_path) -> Path:
    """A data dir sharing the tokenizer, with a shard of bad samples, a truncated and a
    missing shard."""
    root = tmp_path / "broken"
    (root / "shards").mkdir(parents=True)
    for name in ("tokenizer.model", "stats.json"):
        (root / name).write_bytes((data / name).read_bytes())
    good = [f"good{i}" for i in range(4)]
    with wds.TarWriter(str(root / "shards" / "bad.tar"), encoder=False) as sink:
        for reason, change in BAD.items():
            sample = {
                "__key__": reason,
                "flac": flac(),
                "json": meta(reason, **{k: v for k, v in change.items() if k in ("text", "lang")}),
            }
            for k in ("flac", "json"):
                if k in change:
                    sample[k] = change[k]
            sink.write({k: v for k, v in sample.items() if v is not None})
        for key in good:
            sink.write({"__key__": key, "flac": flac(), "json": meta(key)})
    with wds.TarWriter(str(root / "shards" / "cut.tar"), encoder=False) as sink:
        for i in range(3):
            sink.write({"__key__": f"cut{i}", "flac": flac(), "json": meta(f"cut{i}")})
    cut = root / "shards" / "cut.tar"
    cut.write_bytes(cut.read_bytes()[:5000])
    entries = [
        {
            "path": "shards/bad.tar",
            "samples": len(BAD) + len(good),
            "seconds": 10,
            "language": "en",
        },
        {"path": "shards/cut.tar", "samples": 3, "seconds": 1.5, "language": "en"},
        {"path": "shards/gone.tar", "samples": 2, "seconds": 1.0, "language": "en"},
    ]
    write_json_atomic(root / "index.json", build_index({"train": entries, "valid": entries}))
    return root


def test_bad_samples_are_skipped_and_counted_by_reason(broken):
    dm = module(broken, batch_size=4, max_duration=2.0)
    batches = list(dm.val_dataloader())
    for b in batches:
        dm.on_before_batch_transfer(b, 0)
    ids = {i for b in batches for i, d in zip(b["ids"], b["dup"], strict=True) if not d}
    assert {i for i in ids if i.startswith("good")} == {f"good{i}" for i in range(4)}
    assert not ids & set(BAD)
    counts = dm.stats().val
    for reason in BAD:
        assert counts.get(reason) == 1, (reason, counts)
    assert counts[S.SHARD_ERROR] == 2  # the truncated and the missing shard, once each
    assert counts[S.MISSING_SAMPLE] >= 2  # the missing shard's samples
    assert counts[S.KEPT] == len(ids)
    assert "canvas_overflow 1" in dm.stats().summary()
    assert dm.stats().flat()["val/skipped/nan_audio"] == 1


def test_training_survives_bad_samples_and_broken_shards(broken):
    dm = module(broken, batch_size=2, max_duration=2.0)
    batches = train_ids(dm, 10)
    total = Counter()
    for b in batches:
        total.update(b["stats"])
        assert all(i.startswith(("good", "cut")) for i in b["ids"])
    assert total[S.SHARD_ERROR] >= 1 and total[S.NAN_AUDIO] >= 1
    assert total[S.KEPT] == sum(len(b["ids"]) for b in batches)


class Probe(L.LightningModule):
    """The smallest module that consumes the batch dict."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w * batch["audio"].mean() + self.w * batch["tokens"].float().mean()) ** 2

    def validation_step(self, batch, batch_idx):
        self.log("val/n", float(len(batch["ids"])), batch_size=len(batch["ids"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_counts_data_and_checkpoints_the_resume_count(data, tmp_path):
    dm = WhisfusionDataModule(
        DataConfig(root=str(data), num_workers=1, shuffle_buffer=4, batch_size=4),
        canvas_cfg(data),
        Tokenizer.from_file(data / "tokenizer.model"),
    )
    trainer = L.Trainer(
        max_steps=5,
        val_check_interval=5,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert (dm.rank, dm.world_size) == (0, 1)  # from the trainer
    stats = dm.stats()
    assert stats.train[S.KEPT] >= 5 and stats.val[S.KEPT] == len(valid_manifest(data))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)["WhisfusionDataModule"]
    assert state == {"resume_count": 1}


def test_summary_accounts_for_every_sample_read():
    report = S.StatsReport(
        train={"read": 40, "kept": 32, "augmented": 12, "nan_audio": 2, "empty_text": 1},
        val={"read": 8, "kept": 8},
    )
    train, val = report.summary().splitlines()
    assert train.startswith(
        "train: read 40, kept 32 (12 augmented), skipped 3 (empty_text 1, nan_audio 2)"
    )
    assert report.flat()["train/augmented"] == 12
    assert "5 read but still in the shuffle buffer or the duration buckets" in train
    assert val == "val: read 8, kept 8, skipped 0 (none)"

"""Passages of the demo corpus: utterances joined into long clips (data_prep.demo_passages)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from data_prep.demo_corpus import LONG_SPLIT, PASSAGE_MAX_S, DemoConfig, plan_corpus_passages
from data_prep.demo_passages import PAUSE_S, join_passage, plan_passages


def rows_of(lang: str, split: str, durations: list[float], speakers: list[str]) -> list[dict]:
    return [
        {
            "id": f"demo-{lang}-{split}-{k:05d}",
            "audio": f"audio/{lang}/demo-{lang}-{split}-{k:05d}.flac",
            "text": f"Satz {k}." if lang != "zh" else f"句{k}。",
            "lang": lang,
            "speaker": speaker,
            "duration": d,
        }
        for k, (d, speaker) in enumerate(zip(durations, speakers, strict=True))
    ]


def test_passages_join_runs_of_one_voice_within_the_sizes_and_the_longest_clip():
    speakers = ["espeak:de"] * 9 + ["festival:de"] * 7
    rows = rows_of("de", "train", [3.0] * 12 + [9.0] * 4, speakers)
    passages = plan_passages(rows, (2, 4), 20.0, "seed", "train")
    by_audio = {r["audio"]: r for r in rows}
    used = [a for p in passages for a in p.parts]
    assert len(used) == len(set(used))  # an utterance joins one passage at most
    assert len(used) >= 12  # a few left over at most (a run cut to one by the time limit)
    for p in passages:
        parts = [by_audio[a] for a in p.parts]
        assert 2 <= len(parts) <= 4 and len(p.pauses) == len(parts) - 1
        assert all(PAUSE_S[0] <= s <= PAUSE_S[1] for s in p.pauses)
        assert sum(r["duration"] for r in parts) + sum(p.pauses) <= 20.0
        assert p.row["text"] == " ".join(r["text"] for r in parts)
        assert p.row["speaker"] == " + ".join(dict.fromkeys(r["speaker"] for r in parts))
        assert p.row["id"].startswith("demo-de-train-passage-")
    assert len({p.row["id"] for p in passages}) == len(passages)
    # seeded: the same plan again, another seed another plan
    assert [p.parts for p in plan_passages(rows, (2, 4), 20.0, "seed", "train")] == [
        p.parts for p in passages
    ]
    assert [p.parts for p in plan_passages(rows, (2, 4), 20.0, "other", "train")] != [
        p.parts for p in passages
    ]
    # runs follow the voice order: most passages are of one voice
    assert sum(" + " not in p.row["speaker"] for p in passages) >= len(passages) - 1


def test_passages_of_unspaced_languages_join_without_a_space_and_sizes_are_checked():
    rows = rows_of("zh", "valid", [2.0] * 4, ["espeak:cmn"] * 4)
    passages = plan_passages(rows, (2, 2), 28.0, "s", LONG_SPLIT)
    text = {r["audio"]: r["text"] for r in rows}
    assert len(passages) == 2
    assert [p.row["text"] for p in passages] == [
        "".join(text[a] for a in p.parts) for p in passages
    ]
    assert all(p.row["id"].startswith("demo-zh-long-passage-") for p in passages)
    with pytest.raises(ValueError, match="2 <= min <= max"):
        plan_passages(rows, (1, 3), 28.0, "s", "train")
    with pytest.raises(ValueError, match="passage_sentences"):
        DemoConfig(passage_sentences=[3, 2])
    with pytest.raises(ValueError, match="train_passages_per_lang"):
        DemoConfig(train_passages_per_lang=-1)


def test_corpus_passages_draw_the_training_count_and_join_all_of_valid():
    rows = {
        "train": rows_of("en", "train", [2.0] * 40, ["a", "b"] * 20),
        "valid": rows_of("en", "valid", [4.0] * 9, ["c"] * 9),
    }
    cfg = DemoConfig(languages=["en"], train_passages_per_lang=5)
    passages = plan_corpus_passages(rows, cfg)
    assert len(passages["train"]) == 5
    assert all(a.startswith("audio/en/demo-en-train-") for p in passages["train"] for a in p.parts)
    long_parts = [a for p in passages[LONG_SPLIT] for a in p.parts]
    assert len(long_parts) >= 8 and all("-valid-" in a for a in long_parts)
    assert all(
        sum(4.0 for _ in p.parts) + sum(p.pauses) <= PASSAGE_MAX_S for p in passages[LONG_SPLIT]
    )
    cfg.train_passages_per_lang = 0
    assert plan_corpus_passages(rows, cfg)["train"] == []


def test_a_joined_passage_is_its_parts_with_silent_pauses(tmp_path):
    rate = 16000
    waves = [np.full(rate // 2, 0.25, np.float32), np.full(rate, -0.5, np.float32)]
    for k, wave in enumerate(waves):
        sf.write(tmp_path / f"{k}.flac", wave, rate, format="FLAC", subtype="PCM_16")
    (passage,) = plan_passages(
        [
            {
                "id": f"u{k}",
                "audio": f"{k}.flac",
                "text": f"t{k}",
                "lang": "en",
                "speaker": "v",
                "duration": w.size / rate,
            }
            for k, w in enumerate(waves)
        ],
        (2, 2),
        28.0,
        "s",
        "train",
    )
    passage.parts.sort()  # 0.flac first, whatever the seeded order within the voice
    seconds = join_passage(passage, tmp_path, tmp_path / "p.flac")
    audio, got_rate = sf.read(tmp_path / "p.flac", dtype="float32")
    pause = round(passage.pauses[0] * rate)
    assert got_rate == rate and audio.size == rate // 2 + pause + rate
    assert seconds == pytest.approx(audio.size / rate)
    np.testing.assert_allclose(audio[: rate // 2], 0.25, atol=1e-3)
    np.testing.assert_allclose(audio[rate // 2 : rate // 2 + pause], 0.0, atol=1e-4)
    np.testing.assert_allclose(audio[rate // 2 + pause :], -0.5, atol=1e-3)
    sf.write(tmp_path / "0.flac", waves[0], 8000, format="FLAC", subtype="PCM_16")
    with pytest.raises(ValueError, match="0.flac: expected 16 kHz mono"):
        join_passage(passage, tmp_path, tmp_path / "p.flac")

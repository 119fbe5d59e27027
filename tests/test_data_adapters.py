"""Corpus adapters, each on a small directory tree with its corpus's real layout."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from data_fixtures import write_audio

from data_prep.adapters import ADAPTERS, CorpusError, base_language, default_splits
from data_prep.stages import MALFORMED, check_records

LANGS = ["en", "de", "fr", "zh", "ja", "ko"]


def checked(records, max_duration=30.0):
    return check_records(list(records), LANGS, max_duration)


def kept(results):
    return [utt for utt, _, _ in results if utt is not None]


def test_librispeech(tmp_path):
    root = tmp_path / "LibriSpeech"
    chap = root / "train-clean-100" / "103" / "1240"
    (chap / "103-1240.trans.txt").parent.mkdir(parents=True)
    (chap / "103-1240.trans.txt").write_text(
        "103-1240-0000 CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED\n"
        "103-1240-0001 THAT HAD ITS SOURCE AWAY BACK IN THE WOODS\n"
    )
    write_audio(chap / "103-1240-0000.flac", 1.25, fmt="FLAC")
    write_audio(chap / "103-1240-0001.flac", 0.5, fmt="FLAC")
    (root / "dev-clean").mkdir()
    (root / "train-other-500").mkdir()

    assert default_splits("librispeech", root) == (
        ["train-clean-100", "train-other-500"],
        ["dev-clean"],
    )
    utts = kept(checked(ADAPTERS["librispeech"](root, "train-clean-100")))
    assert [u.id for u in utts] == ["librispeech-103-1240-0000", "librispeech-103-1240-0001"]
    assert utts[0].text == "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED"
    assert utts[0].duration == pytest.approx(1.25)
    assert (utts[0].lang, utts[0].speaker) == ("en", "103")
    with pytest.raises(CorpusError, match="test-clean"):
        list(ADAPTERS["librispeech"](root, "test-clean"))


def test_mls_prefers_flac_release_and_maps_language(tmp_path):
    for release, ext in (("mls_german", "flac"), ("mls_german_opus", "opus")):
        split = tmp_path / release / "train"
        split.mkdir(parents=True)
        (split / "transcripts.txt").write_text(
            "10087_10388_000000\tDer Hund läuft, schnell!\nbroken line without a tab\n"
        )
        audio = split / "audio" / "10087" / "10388" / f"10087_10388_000000.{ext}"
        write_audio(
            audio,
            0.75,
            fmt="OGG" if ext == "opus" else "FLAC",
            subtype="OPUS" if ext == "opus" else "PCM_16",
        )
    results = checked(ADAPTERS["mls"](tmp_path, "train"))
    utts = kept(results)
    assert len(utts) == 1  # the opus release holds the same utterances: read once
    assert utts[0].audio.endswith(".flac")
    assert (utts[0].id, utts[0].lang, utts[0].speaker) == (
        "mls-de-10087_10388_000000",
        "de",
        "10087",
    )
    assert utts[0].text == "Der Hund läuft, schnell!"  # casing and punctuation kept
    assert [r for _, r, _ in results if r] == [MALFORMED]
    # a single language directory is a root too
    assert len(kept(checked(ADAPTERS["mls"](tmp_path / "mls_german", "train")))) == 1


def test_commonvoice_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile cannot write MP3, so no Common Voice clip can be made")
    header = "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage"
    header += "\tgender\taccents\tvariant\tlocale\tsegment"
    for locale, sentence in (("de", 'Er sagte: "Hallo".'), ("zh-CN", "你好，世界。")):
        d = tmp_path / "cv-corpus" / locale
        (d / "clips").mkdir(parents=True)
        clip = f"common_voice_{locale}_1.mp3"
        write_audio(d / "clips" / clip, 1.0, fmt="MP3", subtype=None)
        row = f"abc123\t{clip}\tsid\t{sentence}\t\t2\t0\t\t\t\t\t{locale}\t"
        (d / "train.tsv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    utts = kept(checked(ADAPTERS["commonvoice"](tmp_path / "cv-corpus", "train")))
    assert [(u.lang, u.text) for u in utts] == [
        ("de", 'Er sagte: "Hallo".'),
        ("zh", "你好，世界。"),
    ]
    assert utts[0].id == "cv-common_voice_de_1" and utts[0].speaker == "abc123"
    assert utts[0].duration == pytest.approx(1.0, abs=0.1)  # MP3 frames pad a little


def test_fleurs_uses_raw_transcription(tmp_path):
    d = tmp_path / "fleurs" / "cmn_hans_cn"
    rows = [
        ("1", "111.wav", "他说：你好！", "他说 你好", "t a", "16000", "MALE"),
        ("1", "112.wav", "他说：你好！", "他说 你好", "t a", "24000", "FEMALE"),
    ]
    (d / "audio" / "dev").mkdir(parents=True)
    (d / "dev.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    write_audio(d / "audio" / "dev" / "111.wav", 1.0)
    write_audio(d / "audio" / "dev" / "112.wav", 1.5)
    utts = kept(checked(ADAPTERS["fleurs"](tmp_path / "fleurs", "dev")))
    assert [u.id for u in utts] == ["fleurs-cmn_hans_cn-111", "fleurs-cmn_hans_cn-112"]
    assert {u.lang for u in utts} == {"zh"} and utts[0].text == "他说：你好！"
    assert [u.duration for u in utts] == pytest.approx([1.0, 1.5])


def test_jsonl_and_drop_reasons(tmp_path):
    write_audio(tmp_path / "a.wav", 1.0)
    write_audio(tmp_path / "long.wav", 3.0)
    lines = [
        {"audio": "a.wav", "text": "Hello, World.", "lang": "en", "speaker": 7},
        {"id": "x/y.z", "audio": "a.wav", "text": "Bonjour.", "lang": "fr", "duration": 1.0},
        {"audio": "a.wav", "text": "   ", "lang": "en"},
        {"audio": "a.wav", "text": "Hola.", "lang": "es"},
        {"audio": "missing.wav", "text": "Hi.", "lang": "en"},
        {"audio": "long.wav", "text": "Long.", "lang": "en"},
        {"audio": "a.wav", "lang": "en"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    (tmp_path / "train.jsonl").write_text(text)
    results = checked(ADAPTERS["jsonl"](tmp_path, "train"), max_duration=2.0)
    utts = kept(results)
    assert [(u.id, u.lang, u.speaker) for u in utts] == [("a", "en", "7"), ("x_y_z", "fr", None)]
    assert utts[0].audio == str(tmp_path / "a.wav") and utts[0].text == "Hello, World."
    reasons = [r for _, r, _ in results if r]
    assert reasons == [
        "empty_text",
        "unknown_language:es",
        "undecodable_audio",
        "too_long",
        MALFORMED,
        MALFORMED,
    ]


def test_tsv(tmp_path):
    write_audio(tmp_path / "clips" / "b.flac", 0.5, fmt="FLAC")
    (tmp_path / "valid.tsv").write_text(
        "audio\ttext\tlang\tspeaker\nclips/b.flac\t안녕하세요.\tko\ts1\n", encoding="utf-8"
    )
    utts = kept(checked(ADAPTERS["tsv"](tmp_path, "valid")))
    assert [(u.id, u.text, u.lang, u.speaker) for u in utts] == [("b", "안녕하세요.", "ko", "s1")]
    (tmp_path / "bad.tsv").write_text("path\tsentence\nx\ty\n")
    with pytest.raises(CorpusError, match="audio, text, lang"):
        list(ADAPTERS["tsv"](tmp_path, "bad"))


@pytest.mark.parametrize(
    "locale, lang",
    [("zh-CN", "zh"), ("zh-HK", "yue"), ("cmn_hans_cn", "zh"), ("pt_br", "pt"), ("en", "en")],
)
def test_base_language(locale, lang):
    assert base_language(locale) == lang

"""Batched transcription: formats and rates, bad files, long audio, batching, the CLI."""

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from data_fixtures import write_audio
from model_fixtures import save_checkpoint, tiny_model

from whisfusion.alignment import greedy_ctc
from whisfusion.cli import main
from whisfusion.longform import plan_chunks
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.pdd import Transcript
from whisfusion.transcribe import _Chunk, pack_batches, sources_from_inputs

SR = 16000


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return tiny_model(["decode.candidates=1"])


def noise(seconds, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy((0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32))


def transcribe_cli(checkpoint, *args: str) -> int:
    """`whisfusion transcribe --checkpoint CHECKPOINT ARGS...`; its exit code."""
    return main(["transcribe", "--checkpoint", str(checkpoint), *args])


def test_mixed_formats_rates_and_arrays_come_back_in_order(model, tmp_path, caplog):
    files = [
        (tmp_path / "a.wav", 8000, 1, 1.3),
        (tmp_path / "b.flac", 22050, 2, 2.6),
        (tmp_path / "c.ogg", 44100, 1, 0.9),
        (tmp_path / "d.wav", 48000, 2, 3.4),
    ]
    for path, rate, channels, seconds in files:
        subtype = "VORBIS" if path.suffix == ".ogg" else "PCM_16"
        write_audio(path, seconds, rate=rate, channels=channels, seed=rate, subtype=subtype)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    wave = noise(1.7, 0)
    inputs = [
        str(files[0][0]),
        tmp_path / "garbage.wav",
        str(files[1][0]),
        wave.numpy(),
        str(tmp_path / "missing.flac"),
        str(files[2][0]),
        str(files[3][0]),
    ]
    with caplog.at_level(logging.WARNING, logger="whisfusion.transcribe"):
        results = model.transcribe(inputs, batch_size=3)

    names = [
        str(files[0][0]),
        str(tmp_path / "garbage.wav"),
        str(files[1][0]),
        "<array 3>",
        str(tmp_path / "missing.flac"),
        str(files[2][0]),
        str(files[3][0]),
    ]
    assert [r.path for r in results] == names
    assert [r.ok for r in results] == [True, False, True, True, False, True, True]
    for name in ("garbage.wav", "missing.flac"):
        assert name in caplog.text
    assert "missing.flac" in results[4].error and results[4].text == ""
    seconds = [files[0][3], files[1][3], 1.7, files[2][3], files[3][3]]
    good = [r for r in results if r.ok]
    for r, expected in zip(good, seconds, strict=True):
        assert r.duration == pytest.approx(expected, abs=1e-3) and r.chunks == 1
    # each input alone gives what it got inside the mixed batch: the order was restored
    alone = [
        model.transcribe(x)[0].text for x in (inputs[0], inputs[2], inputs[3], inputs[5], inputs[6])
    ]
    assert [r.text for r in good] == alone


def test_mp3_input(model, tmp_path):
    path = tmp_path / "e.mp3"
    try:
        write_audio(path, 1.5, rate=44100, fmt="MP3", subtype="MPEG_LAYER_III")
    except (sf.LibsndfileError, ValueError, TypeError) as err:
        pytest.skip(f"this libsndfile cannot write MP3: {err}")
    (result,) = model.transcribe(path)
    # MP3 encoders pad the start and end with a few ms of silence
    assert result.ok and result.duration == pytest.approx(1.5, abs=0.1)


def test_long_audio_is_one_batched_decoder_call(model, monkeypatch):
    calls = []
    real = Whisfusion.decode_features

    def spy(self, features, valid, durations, *args, **kwargs):
        calls.append(list(durations))
        return real(self, features, valid, durations, *args, **kwargs)

    monkeypatch.setattr(Whisfusion, "decode_features", spy)
    (result,) = model.transcribe(noise(75.0, 1), batch_size=8, return_trajectory=True)
    assert len(plan_chunks(75 * SR)) >= 3
    assert result.chunks == len(plan_chunks(75 * SR))
    assert len(calls) == 1 and calls[0] == pytest.approx([30.0, 30.0, 25.0])
    assert len(result.trajectory) == result.chunks
    assert all(1 <= len(steps) <= model.cfg.decode.steps for steps in result.trajectory)


def test_chunk_transcripts_are_merged_with_every_word_once(model, monkeypatch):
    """Hand-made transcripts of the overlapping chunks, as a perfect decoder would give them."""
    words = [f"w{i}" for i in range(150)]  # 2 words per second
    chars = [chr(0x4E00 + i) for i in range(300)]  # 4 characters per second
    per_lang = {
        "en": [" ".join(words[2 * s // SR : 2 * e // SR]) for s, e in plan_chunks(75 * SR)],
        "zh": ["".join(chars[4 * s // SR : 4 * e // SR]) for s, e in plan_chunks(75 * SR)],
    }
    calls = []

    def fake(self, features, valid, durations, languages=None, **kwargs):
        calls.append(len(durations))
        seen = {"en": 0, "zh": 0}
        out = []
        for lang in languages:
            out.append(Transcript(per_lang[lang][seen[lang]], lang, []))
            seen[lang] += 1
        return out

    monkeypatch.setattr(Whisfusion, "decode_features", fake)
    results = model.transcribe(
        [noise(75.0, 2), noise(75.0, 3)], language=["en", "zh"], batch_size=6
    )
    assert calls == [6]
    assert results[0].text == " ".join(words)
    assert results[1].text == "".join(chars)


def test_segments_cut_at_pauses_are_decoded_apart_and_joined_in_order(model, monkeypatch):
    """`segment_s`: no overlapping windows; each segment's transcript once, in order."""
    gen = torch.Generator().manual_seed(4)
    speech = [0.3 * torch.randn(s * SR, generator=gen) for s in (6, 7, 5, 6)]
    pause = torch.zeros(SR // 2)
    audio = torch.cat([x for s in speech for x in (s, pause)][:-1])  # 25.5 s, 3 pauses
    calls = []

    def fake(self, features, valid, durations, languages=None, **kwargs):
        calls.append(list(durations))
        return [Transcript(f"part{k}.", lang, []) for k, lang in enumerate(languages)]

    monkeypatch.setattr(Whisfusion, "decode_features", fake)
    (result,) = model.transcribe(audio, language="en", segment_s=10.0)
    (durations,) = calls
    assert len(durations) == result.chunks >= 3 and max(durations) <= 10.0
    assert sum(durations) == pytest.approx(audio.numel() / SR)
    assert result.text == " ".join(f"part{k}." for k in range(result.chunks))
    with pytest.raises(ValueError, match="segment_s"):
        model.transcribe(audio, language="en", segment_s=40.0)


def test_results_do_not_depend_on_the_batch_size(model):
    inputs = [noise(s, i) for i, s in enumerate([0.8, 3.1, 41.0, 1.9, 6.4, 0.5])]
    one = model.transcribe(inputs, batch_size=1)
    four = model.transcribe(inputs, batch_size=4)
    assert [(r.text, r.language, r.chunks) for r in one] == [
        (r.text, r.language, r.chunks) for r in four
    ]
    assert [r.chunks for r in one] == [1, 1, 2, 1, 1, 1]


def test_length_first_decodes_the_batch_on_a_cut_canvas(model, monkeypatch):
    """A decoder sure of EOS from canvas position 4 on: after the length step every call gets
    the canvas cut to its text and the canvas margin, with the validity rows of that width."""
    decoder, seen = model.decoder, []
    real = type(decoder).forward

    def eos_after_four(self, tokens, cache, canvas_valid=None, where=None):
        seen.append((tokens.shape[1], canvas_valid.shape[1]))
        logits = real(self, tokens, cache, canvas_valid, where)
        logits[where.nonzero()[:, 1] >= 4, model.tokenizer.eos_id] = 1e4
        return logits

    monkeypatch.setattr(type(decoder), "forward", eos_after_four)
    inputs = [noise(s, i) for i, s in enumerate([0.8, 3.1, 6.4])]
    results = model.transcribe(inputs, batch_size=3, eos_threshold=0.9)
    assert len(results) == 3 and all(r.ok for r in results)
    full, *rest = seen
    assert full[0] > 4 + model.cfg.model.canvas.margin  # the length step sees the whole canvas
    assert rest and set(rest) == {(4 + model.cfg.model.canvas.margin,) * 2}


def test_sampled_decoding_is_reproducible_for_a_seed(model):
    inputs = [noise(s, i) for i, s in enumerate([1.2, 2.5, 0.7])]
    first = model.transcribe(inputs, candidates=3, select="mbr")
    again = model.transcribe(inputs, candidates=3, select="mbr")
    assert [r.text for r in first] == [r.text for r in again]


def test_pack_batches_keeps_each_input_together():
    counts = [1, 3, 2, 5, 1, 4, 1]
    inputs = [[_Chunk(i, torch.zeros(1), None) for _ in range(n)] for i, n in enumerate(counts)]
    batches = list(pack_batches(iter(inputs), 4))
    assert all(1 <= len(b) <= 4 for b in batches)
    flat = [c.source for b in batches for c in b]
    assert flat == [i for i, n in enumerate(counts) for _ in range(n)]
    for i, n in enumerate(counts):
        holding = {k for k, b in enumerate(batches) if any(c.source == i for c in b)}
        assert len(holding) == (1 if n <= 4 else -(-n // 4))


def test_bad_arguments_are_refused(model):
    with pytest.raises(ValueError, match="1-D"):
        sources_from_inputs(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="2 languages given for 3 inputs"):
        sources_from_inputs([torch.zeros(10)] * 3, ["en", "de"])
    with pytest.raises(ValueError, match="'xx' is not one the model knows"):
        model.transcribe(torch.zeros(1600), language="xx")
    with pytest.raises(ValueError, match="selection method"):
        model.transcribe(torch.zeros(1600), select="best")
    with pytest.raises(ValueError, match="decode method must be one of pdd, ctc; got 'beam'"):
        DecodeOptions.from_config(model.cfg.decode, method="beam")
    with pytest.raises(ValueError, match="align_hidden is 0"):  # no alignment head to read
        model.read_ctc(torch.zeros(1, 5, model.encoder.width), torch.ones(1, 5, dtype=bool))
    with pytest.raises(ValueError, match="align_weight.*align_best_path is off"):
        model.check_options(DecodeOptions.from_config(model.cfg.decode, align_weight=2.0))
    with pytest.raises(ValueError, match="align_hidden is 0"):  # a blank penalty needs the head
        model.check_options(DecodeOptions.from_config(model.cfg.decode, blank_penalty=1.0))
    with pytest.raises(ValueError, match="blank_penalty must be >= 0"):
        DecodeOptions.from_config(model.cfg.decode, blank_penalty=-1.0)
    with pytest.raises(ValueError, match=r"decode.blocks must be in \[1, decode.steps=4\]"):
        DecodeOptions.from_config(model.cfg.decode, steps=4, blocks=5)
    with pytest.raises(ValueError, match="decode.eos_threshold > 0 needs low_confidence"):
        DecodeOptions.from_config(model.cfg.decode, eos_threshold=0.9, remasking="random")


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_ctc_method_reads_the_alignment_head_greedily(frame_stack):
    aligned = tiny_model(
        ["model.decoder.align_hidden=16", f"model.decoder.frame_stack={frame_stack}"]
    )
    audio = torch.zeros(2, 2 * SR)
    audio[0], audio[1, :SR] = noise(2.0, 5), noise(1.0, 6)
    features, valid = aligned.encode(audio, torch.tensor([2 * SR, SR]))
    cache = aligned.cross_cache(features, valid)
    assert cache.key_valid.shape[1] == -(-valid.shape[1] // frame_stack)
    ids = greedy_ctc(cache.prior.log_probs, cache.key_valid, aligned.prior.blank)
    expected = [aligned.tokenizer.decode(row).strip() for row in ids]
    assert any(expected)  # an untrained head still emits tokens: the comparison means something
    ctc = DecodeOptions.from_config(aligned.cfg.decode, method="ctc")
    got = aligned.decode_features(features, valid, [2.0, 1.0], ["de", None], options=ctc)
    assert [t.text for t in got] == expected
    assert [t.language for t in got] == ["de", None]  # the head reads no language
    pdd = aligned.decode_features(features, valid, [2.0, 1.0], ["de", None])
    assert [t.text for t in pdd] != expected


# ---------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def test_transcribe_command_jsonl_and_txt(model, checkpoint, tmp_path, capsys):
    audio = tmp_path / "audio"
    write_audio(audio / "one.wav", 1.2, rate=22050, seed=1)
    write_audio(audio / "sub" / "two.flac", 2.3, rate=16000, seed=2)
    (audio / "notes.txt").write_text("not audio")
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    expected_paths = [str(audio / "one.wav"), str(audio / "sub" / "two.flac"), str(bad)]
    expected = model.transcribe(expected_paths[:2])

    out = tmp_path / "out.jsonl"
    assert (
        transcribe_cli(checkpoint, str(audio), str(bad), "--output", str(out), "--device", "cpu")
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == expected_paths
    assert [r["text"] for r in rows[:2]] == [r.text for r in expected]
    assert "error" in rows[2] and "error" not in rows[0]
    assert str(bad) in capsys.readouterr().err

    txt = tmp_path / "out.txt"
    assert transcribe_cli(checkpoint, str(audio), str(bad), "--output", str(txt)) == 0
    lines = txt.read_text().splitlines()
    assert lines == [f"{p}\t{r.text}" for p, r in zip(expected_paths, expected, strict=False)]

    # stdout, when no --output
    assert transcribe_cli(checkpoint, str(audio / "one.wav")) == 0
    assert capsys.readouterr().out == f"{audio / 'one.wav'}\t{expected[0].text}\n"


def test_transcribe_command_ctc_method(model, checkpoint, tmp_path, capsys):
    wav = tmp_path / "one.wav"
    write_audio(wav, 1.2, rate=16000, seed=1)
    aligned = tiny_model(["model.decoder.align_hidden=16"])
    aligned_ckpt = save_checkpoint(aligned, tmp_path / "aligned.ckpt")
    assert transcribe_cli(aligned_ckpt, str(wav), "--method", "ctc") == 0
    aligned.cfg.decode.method = "ctc"
    assert capsys.readouterr().out == f"{wav}\t{aligned.transcribe(str(wav))[0].text}\n"
    with pytest.raises(SystemExit, match="align_hidden is 0"):
        transcribe_cli(checkpoint, str(wav), "--method", "ctc")


def test_transcribe_command_fails_when_nothing_is_transcribed(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"garbage" * 30)
    assert transcribe_cli(checkpoint, str(bad)) == 1
    assert "1 of 1 files could not be transcribed" in capsys.readouterr().err
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SystemExit, match="no audio files"):
        transcribe_cli(checkpoint, str(tmp_path / "empty_dir"))
    with pytest.raises(SystemExit, match="'xx' is not one the model knows"):
        transcribe_cli(checkpoint, str(bad), "--language", "xx")

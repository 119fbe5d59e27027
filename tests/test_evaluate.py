"""`whisfusion evaluate` on a manifest and on shards, and agreement with `whisfusion score`."""

import json

import pytest
import torch
from data_fixtures import write_audio
from model_fixtures import TEXTS, save_checkpoint, tiny_model

from whisfusion.cli import main
from whisfusion.data.manifest import Utterance
from whisfusion.data.shards import build_index, write_json_atomic, write_shard

LANGS = ["en", "en", "de", "de", "zh", "zh"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    return save_checkpoint(
        tiny_model(["decode.candidates=1"]), tmp_path_factory.mktemp("ckpt") / "m.ckpt"
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The same six utterances as a manifest (relative audio paths) and as an index dir."""
    root = tmp_path_factory.mktemp("corpus")
    utts = []
    for i, (text, lang) in enumerate(zip(TEXTS, LANGS, strict=True)):
        write_audio(root / "audio" / f"u{i}.wav", 0.8 + 0.4 * i, seed=i)
        utts.append(Utterance(f"{lang}-{i}", f"audio/u{i}.wav", 0.8 + 0.4 * i, text, lang))
    (root / "valid.jsonl").write_text("".join(u.to_json() + "\n" for u in utts))
    entries = []
    for lang in dict.fromkeys(LANGS):
        rel = f"shards/valid/{lang}-000000.tar"
        mine = [
            Utterance(u.id, str(root / u.audio), u.duration, u.text, u.lang)
            for u in utts
            if u.lang == lang
        ]
        info = write_shard(root / rel, mine)
        entries.append(
            {"path": rel, "samples": info["samples"], "seconds": info["seconds"], "language": lang}
        )
    write_json_atomic(root / "index.json", build_index({"valid": entries}))
    return root


def evaluate(checkpoint, data, out, *extra):
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", *data, "--output-dir", str(out)]
    assert main([*argv, "--device", "cpu", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def score(out, json_path):
    """`whisfusion score` on the ref/hyp files evaluate wrote; its JSON numbers."""
    argv = ["score", str(out / "ref.jsonl"), str(out / "hyp.jsonl"), "--json", str(json_path)]
    assert main(argv) == 0
    return json.loads(json_path.read_text())


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_evaluation_matches_the_score_command(checkpoint, corpus, tmp_path):
    out = tmp_path / "eval"
    results = evaluate(checkpoint, [str(corpus / "valid.jsonl")], out, "--batch-size", "4")
    for name in ("results.json", "results.md", "ref.jsonl", "hyp.jsonl"):
        assert (out / name).is_file()
    assert results["utterances"] == 6 and results["failed"] == 0
    assert set(results["scores"]["languages"]) == {"en", "de", "zh"}
    assert results["scores"]["languages"]["zh"]["metric"] == "CER"
    assert results["decode"]["batch_size"] == 4 and results["language_mode"] == "given"
    speed = results["speed"]
    assert speed["audio_seconds"] == pytest.approx(sum(0.8 + 0.4 * i for i in range(6)), abs=1e-3)
    assert speed["rtfx"] > 0 and 0 < speed["encoder_seconds"] <= speed["wall_seconds"]
    # every stage of the pipeline is inside the timed wall
    assert set(speed["stage_seconds"]) == {"load", "encode", "decode"}
    assert sum(speed["stage_seconds"].values()) <= speed["wall_seconds"]
    assert speed["dtype"] == "float32"  # decode.dtype auto on the CPU
    assert [r["id"] for r in lines(out / "ref.jsonl")] == [
        f"{lang}-{i}" for i, lang in enumerate(LANGS)
    ]
    assert [r["lang"] for r in lines(out / "hyp.jsonl")] == LANGS  # given languages come back
    assert "| en |" in (out / "results.md").read_text()

    scored = score(out, tmp_path / "s.json")
    assert scored["languages"] == results["scores"]["languages"]
    assert scored["groups"] == results["scores"]["groups"]
    assert scored["average"] == results["scores"]["average"]
    assert scored["cer_every_language"] == results["cer_every_language"]


def test_shards_give_what_the_manifest_gives(checkpoint, corpus, tmp_path):
    """Shards hold the same 16-bit audio as the WAV files: identical transcripts and scores."""
    by_manifest = evaluate(checkpoint, [str(corpus / "valid.jsonl")], tmp_path / "m")
    by_index = evaluate(checkpoint, [str(corpus)], tmp_path / "i")
    by_glob = evaluate(
        checkpoint,
        [str(corpus / "shards/valid/{en,de}-000000.tar"), str(corpus / "shards/valid/z*.tar")],
        tmp_path / "g",
    )
    hyps = {u["id"]: u["text"] for u in lines(tmp_path / "m" / "hyp.jsonl")}
    assert {u["id"]: u["text"] for u in lines(tmp_path / "i" / "hyp.jsonl")} == hyps
    assert {u["id"]: u["text"] for u in lines(tmp_path / "g" / "hyp.jsonl")} == hyps
    assert by_index["scores"] == by_manifest["scores"] == by_glob["scores"]


def test_predicted_language_and_undecodable_audio(checkpoint, corpus, tmp_path, capsys):
    rows = lines(corpus / "valid.jsonl")
    (corpus / "audio" / "broken.wav").write_bytes(b"garbage" * 40)
    rows.append({**rows[0], "id": "en-broken", "audio": "audio/broken.wav"})
    manifest = corpus / "with_broken.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    results = evaluate(checkpoint, [str(manifest)], out, "--predict-language")
    assert results["failed"] == 1 and results["failed_ids"] == ["en-broken"]
    assert "en-broken" in capsys.readouterr().err
    assert results["language_mode"] == "predicted" and 0 <= results["language_accuracy"] <= 1
    broken = [h for h in lines(out / "hyp.jsonl") if h["id"] == "en-broken"]
    assert broken[0]["text"] == "" and "broken.wav" in broken[0]["error"]
    # the failed utterance counts as all deletions, for evaluate and score alike
    en = results["scores"]["languages"]["en"]
    assert en["utts"] == 3 and en["del"] >= len(rows[0]["text"].split())
    assert score(out, tmp_path / "s.json")["languages"] == results["scores"]["languages"]


def test_bad_data_is_named(checkpoint, corpus, tmp_path):
    with pytest.raises(SystemExit, match="no shard file"):
        main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "none-*.tar")])
    with pytest.raises(SystemExit, match="no split 'test'"):
        main(
            ["evaluate", "--checkpoint", str(checkpoint), "--data", str(corpus), "--split", "test"]
        )
    twice = str(corpus / "valid.jsonl")
    with pytest.raises(SystemExit, match="occurs twice"):
        main(["evaluate", "--checkpoint", str(checkpoint), "--data", twice, twice])
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes((corpus / "shards/valid/en-000000.tar").read_bytes()[:700])
    with pytest.raises(SystemExit, match="cut.tar"):
        main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(truncated)])

"""`whisfusion baseline`: Whisper's own decoding of an evaluation set, scored as `evaluate`
scores a checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from whisfusion.cli import main as cli
from whisfusion.commands.baseline import first_per_language, run_baseline
from whisfusion.commands.evaluate import read_eval_set

REFS = [
    ("u-en", "en", "The cat sat on the mat."),
    ("u-ru", "ru", "Сегодня хороший день."),
    ("u-zh", "zh", "今天天气很好。"),
]
# What the fake model "hears": en right, ru one word wrong of three, zh two characters of six.
HEARD = {"en": "the cat sat on the mat", "ru": "Сегодня плохой день", "zh": "今天天汽很"}


def write_manifest(tmp_path, bad: bool = False):
    rows = []
    for utt_id, lang, text in REFS:
        audio = tmp_path / f"{utt_id}.wav"
        sf.write(audio, 0.1 * np.ones(16000, dtype=np.float32), 16000)
        rows.append({"id": utt_id, "audio": audio.name, "text": text, "lang": lang, "duration": 1})
    if bad:
        bad_row = {"id": "u-bad", "audio": "missing.wav", "text": "two words", "lang": "en"}
        rows.append({**bad_row, "duration": 1})
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_scores_like_whisfusion_score_and_counts_unreadable_audio_as_deletions(tmp_path):
    items = read_eval_set([str(write_manifest(tmp_path, bad=True))], "valid", False)
    heard = []

    def fake(audio, lang):
        assert audio.dtype == np.float32 and audio.shape == (16000,)
        heard.append(lang)
        return HEARD[lang]

    out = tmp_path / "out"
    results = run_baseline(items, fake, out, {"model": "fake", "beam": 1, "data": ["set"]})
    assert heard == ["en", "ru", "zh"]
    rates = results["scores"]["languages"]
    assert rates["ru"]["error_rate"] == pytest.approx(1 / 3)
    assert rates["zh"]["error_rate"] == pytest.approx(2 / 6)
    # the unreadable utterance's two words are deletions
    assert rates["en"]["error_rate"] == pytest.approx(2 / 8)
    assert results["failed"] == 1 and results["failed_ids"] == ["u-bad"]
    hyps = [json.loads(line) for line in (out / "hyp.jsonl").read_text().splitlines()]
    assert "error" in hyps[-1] and hyps[-1]["text"] == ""
    cli(["score", str(out / "ref.jsonl"), str(out / "hyp.jsonl"), "--json", str(out / "s.json")])
    assert json.loads((out / "s.json").read_text())["languages"] == rates


def test_limit_per_language_keeps_the_first_of_each_language(tmp_path):
    manifest = write_manifest(tmp_path)
    more = tmp_path / "more.jsonl"
    more.write_text(manifest.read_text().replace('"id": "u-', '"id": "v-'))
    items = read_eval_set([str(manifest), str(more)], "valid", False)
    kept = first_per_language(items, 1)
    assert [i.id for i in kept] == ["u-en", "u-ru", "u-zh"]
    assert len(first_per_language(items, 2)) == 6 == len(items)


def test_a_directory_without_a_model_is_named(tmp_path):
    manifest = write_manifest(tmp_path)
    with pytest.raises(SystemExit, match="holds no CTranslate2 model.bin"):
        cli(["baseline", "--data", str(manifest), "--model", str(tmp_path), "--output-dir", "x"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_whisper_base_reads_synthesized_english(tmp_path):
    sentences = ["The weather is very nice today.", "Please call me tomorrow morning."]
    rows = []
    for k, text in enumerate(sentences):
        wav = tmp_path / f"{k}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(wav), text], check=True)
        rows.append({"id": f"s{k}", "audio": wav.name, "text": text, "lang": "en", "duration": 3})
    manifest = tmp_path / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cli(["baseline", "--data", str(manifest), "--beam", "1", "--output-dir", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["beam"] == 1 and results["utterances"] == 2
    assert results["scores"]["languages"]["en"]["error_rate"] < 0.3

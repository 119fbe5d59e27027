"""Checkpoints saved by an earlier version of the model code load and decode to the transcripts
that version recorded.

tests/data/golden holds two tiny checkpoints trained a few steps on random features (format 1:
the alignment head under `align.`, its per-layer parts inside the decoder's blocks, and a
`model.size` config key): `aligned` with the CTC alignment prior as the demo configures it
(frame_stack 2, head context, token memory and input, best path, logit fusion, blank penalty,
language vocabulary, align_weight) and `plain` (the paper's decoder, random remasking, MBR).
Their transcripts of three noise clips are in transcripts.json, under each decoding tried.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions

GOLDEN = Path(__file__).parent / "data" / "golden"
RECORDED = json.loads((GOLDEN / "transcripts.json").read_text(encoding="utf-8"))
AUDIO = [str(GOLDEN / f"utt{i}.wav") for i in range(3)]
# decoding -> (options replaced on the checkpoint's own, whether the language is given)
DECODINGS = {
    "pdd": ({}, True),
    "ctc": ({"method": "ctc"}, True),
    "greedy_predicted_language": (
        {"temperature": 0.0, "remasking": "low_confidence", "steps": 3},
        False,
    ),
    "pdd_weight_0.5_open_vocab": (
        {"language_vocab_min_count": 0, "align_weight": 0.5, "blank_penalty": 0.0},
        True,
    ),
}
CASES = [(name, label) for name, runs in RECORDED["transcripts"].items() for label in runs]


@pytest.fixture(scope="module")
def models():
    return {
        name: Whisfusion.from_checkpoint(GOLDEN / f"{name}.ckpt") for name in ("aligned", "plain")
    }


@pytest.mark.parametrize(("name", "label"), CASES)
def test_old_checkpoint_decodes_to_the_recorded_transcripts(models, name, label):
    model = models[name]
    overrides, given = DECODINGS[label]
    options = DecodeOptions.from_config(model.cfg.decode, **overrides)
    languages = RECORDED["languages"] if given else None
    results = model.transcribe(AUDIO, languages, options)
    got = [[r.text, r.language] for r in results]
    assert got == RECORDED["transcripts"][name][label]
    assert any(text for text, _ in got), "the recorded transcripts should not all be empty"


def test_old_checkpoints_load_under_todays_names(models):
    aligned, plain = models["aligned"], models["plain"]
    assert aligned.prior is not None and aligned.prior.kv_token is not None
    assert len(aligned.prior.sharpness) == aligned.cfg.model.decoder.layers
    assert plain.prior is None
    assert not hasattr(aligned.cfg.model, "size")

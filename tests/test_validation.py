"""Periodic PDD validation inside a real (tiny) training run: what reaches TensorBoard."""

from __future__ import annotations

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_fixtures import TINY, tiny_data_dir

from whisfusion.config import load_config
from whisfusion.train import run_training


def _train(tmp_path, *overrides: str):
    """A 4-step tiny training run with PDD validation; (its config, its TensorBoard events)."""
    data = tiny_data_dir(tmp_path / "data")
    base = [
        f"data.root={data}",
        f"trainer.run_dir={tmp_path / 'run'}",
        "trainer.max_steps=4",
        "trainer.progress_bar=false",
        "data.num_workers=0",
    ]
    cfg = load_config(TINY, base + list(overrides))
    run_dir = run_training(cfg)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    return cfg, events


def test_validation_logs_scores_examples_and_trajectory(tmp_path, capsys):
    cfg, events = _train(
        tmp_path,
        "validation.every_n_steps=2",
        "validation.examples_per_language=1",
        "trainer.log_every_n_steps=1",
    )
    scalars = set(events.Tags()["scalars"])
    for tag in [
        "val/wer_en",
        "val/wer_de",
        "val/err_english",
        "val/wer_avg",
        "val/cer_mean",
        "val/decode_rtfx",
        "data/train/read",
        "data/train/kept",
        "data/train/skipped/nan_audio",
    ]:
        assert tag in scalars, sorted(scalars)
    # after steps 2 and 4 (Lightning files a validation inside fit under the step before);
    # the one after the last step is the closing validation, not run a second time
    assert [e.step for e in events.Scalars("val/wer_avg")] == [1, 3]
    texts = set(events.Tags()["tensors"])
    assert {"val/examples/text_summary", "val/trajectory/text_summary"} <= texts, texts
    table = events.Tensors("val/examples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| en |" in table and "| de |" in table
    trajectory = events.Tensors("val/trajectory/text_summary")[-1].tensor_proto.string_val[0]
    assert trajectory.decode().count("step ") == cfg.decode.steps
    out = capsys.readouterr().out
    assert "== validation (PDD) ==" in out and "| en | WER |" in out
    assert "CER (characters), every language: " in out
    run_dir = tmp_path / "run"
    assert "last.ckpt" in out and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").read_text().count("max_steps: 4") == 1
    kept = events.Scalars("data/train/kept")[-1].value
    assert kept >= 3 * cfg.data.batch_size  # counted batches of the stream, not zeros


def test_a_run_ends_with_a_validation_of_its_last_step(tmp_path):
    _, events = _train(tmp_path, "validation.every_n_steps=3")
    # after step 3 inside fit (filed under step 2), then the closing one after step 4
    assert [e.step for e in events.Scalars("val/wer_avg")] == [2, 4]

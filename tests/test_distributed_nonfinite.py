"""Non-finite losses: the step is skipped on all ranks together and counted; a run of them stops."""

import lightning as L
import pytest
import torch
from model_fixtures import feature_batches, fit_batches, tiny_model

from whisfusion.callbacks.nonfinite import NonFiniteGuard, NonFiniteLossError, gradient_norm
from whisfusion.lightning_module import WhisfusionModule


def test_guard_counts_and_stops_after_a_run():
    guard = NonFiniteGuard(max_in_row=3)
    assert not guard.finish_step(0)
    guard.flag()
    guard.flag()  # two bad micro-batches of one step: one skipped step
    assert guard.finish_step(1)
    assert not guard.finish_step(2)
    assert (guard.skipped, guard.in_row) == (1, 0)
    guard.flag()
    assert guard.finish_step(3)
    guard.flag()
    assert guard.finish_step(4)
    guard.flag()
    with pytest.raises(
        NonFiniteLossError, match=r"3 optimizer steps in a row \(steps 3..5; 4 skipped"
    ):
        guard.finish_step(5)
    restored = NonFiniteGuard(3)
    restored.load_state_dict(guard.state_dict())
    assert (restored.skipped, restored.in_row) == (4, 3)


def test_gradient_norm_is_the_norm_of_all_gradients_and_sees_a_nan():
    lin = torch.nn.Linear(3, 2)
    assert gradient_norm(lin) == 0  # no gradient yet
    lin(torch.randn(4, 3)).square().sum().backward()
    expected = torch.cat([lin.weight.grad.flatten(), lin.bias.grad]).norm()
    assert torch.allclose(gradient_norm(lin), expected)
    lin.weight.grad[1, 2] = float("nan")
    assert not torch.isfinite(gradient_norm(lin))


def _batches(model, n: int, nan_at: set[int]) -> list[dict]:
    batches = feature_batches(model, n)
    for i in nan_at:
        batches[i]["features"][0, 3] = float("nan")
    return batches


class StepRecorder(L.Callback):
    def __init__(self):
        self.weights, self.adam_steps = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(pl_module.model.decoder.head.weight.detach().clone())
        state = trainer.optimizers[0].state.get(pl_module.model.decoder.head.weight, {})
        self.adam_steps.append(float(state.get("step", 0)))


def test_nonfinite_step_changes_nothing_and_training_goes_on(tmp_path):
    module = WhisfusionModule(tiny_model(["trainer.max_steps=4", "optim.warmup_steps=1"]))
    rec = StepRecorder()
    trainer = fit_batches(module, _batches(module.model, 4, nan_at={1}), tmp_path, [rec])
    assert trainer.global_step == 4  # the skipped step still counts
    assert torch.equal(rec.weights[1], rec.weights[0])  # no update, not even weight decay
    assert rec.adam_steps == [1.0, 1.0, 2.0, 3.0]  # AdamW's moments did not move either
    assert not torch.equal(rec.weights[2], rec.weights[1])
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 1
    assert module.nonfinite.state_dict() == {"skipped": 1, "in_row": 0}
    assert all(torch.isfinite(p).all() for p in module.model.decoder.parameters())


def test_a_run_of_nonfinite_steps_stops_training(tmp_path):
    module = WhisfusionModule(tiny_model(["trainer.max_nonfinite_in_row=2", "trainer.max_steps=5"]))
    with pytest.raises(NonFiniteLossError, match="2 optimizer steps in a row"):
        fit_batches(module, _batches(module.model, 5, nan_at={1, 2, 3, 4}), tmp_path)
    assert module.nonfinite.skipped == 2

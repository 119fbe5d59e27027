"""EMA of the decoder weights: the average itself, validation on it, checkpoints, resume."""

import lightning as L
import pytest
import torch
from model_fixtures import cpu_trainer, feature_batches, tiny_model
from torch.utils.data import DataLoader

from whisfusion.callbacks.ema import EMA, EMA_KEY, ema_update
from whisfusion.lightning_module import WhisfusionModule
from whisfusion.model import Whisfusion

DECAY = 0.5


def test_ema_update_is_the_exponential_average():
    ema = {"w": torch.zeros(3), "n": torch.tensor([7])}
    for _ in range(4):
        ema_update(ema, {"w": torch.ones(3), "n": torch.tensor([9])}, 0.9)
    torch.testing.assert_close(ema["w"], torch.full((3,), 1 - 0.9**4))
    assert ema["n"].item() == 9  # integer buffers are copied, not averaged


def test_decay_out_of_range_is_refused():
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(1.0)


def _decoder_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.decoder.state_dict().items()}


class Recorder(L.Callback):
    """Decoder weights after each step, at validation start (before the swap), and inside it."""

    def __init__(self):
        self.after_step, self.before_val, self.in_val = [], None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append(_decoder_state(pl_module))

    def on_validation_start(self, trainer, pl_module):
        self.before_val = _decoder_state(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.in_val = _decoder_state(pl_module)


def _assert_states_equal(a, b, exact: bool = True):
    """Equal state dicts: bit for bit, or up to float rounding (an average computed two ways)."""
    assert a.keys() == b.keys()
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-7}
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), **tol, msg=k)


def test_ema_validates_on_the_average_checkpoints_and_resumes(tmp_path):
    overrides = ["trainer.max_steps=4", "optim.warmup_steps=1", "optim.lr=0.01"]
    module = WhisfusionModule(tiny_model(overrides))
    batches = feature_batches(module.model, 3)
    recorder, ema = Recorder(), EMA(DECAY)
    trainer = cpu_trainer(tmp_path, 3, [recorder, ema])
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(module, loader, DataLoader(batches[:1], batch_size=None))

    # the average of the weights after each step, starting from the first
    expected = recorder.after_step[0]
    for w in recorder.after_step[1:]:
        expected = {k: DECAY * expected[k] + (1 - DECAY) * w[k] for k in w}
    averages = ema._averages(module)
    _assert_states_equal(averages, expected, exact=False)
    # validation ran on the average; training weights are back afterwards
    _assert_states_equal(recorder.in_val, averages)
    _assert_states_equal(_decoder_state(module), recorder.before_val)
    assert any(not torch.equal(expected[k], recorder.before_val[k]) for k in expected)

    path = tmp_path / "ema.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    _assert_states_equal(ckpt[EMA_KEY], averages)
    assert set(ckpt[EMA_KEY]) == set(module.model.decoder.state_dict())
    _assert_states_equal(Whisfusion.from_checkpoint(path).decoder.state_dict(), averages)
    trained = Whisfusion.from_checkpoint(path, use_ema=False).decoder.state_dict()
    _assert_states_equal(trained, recorder.before_val)

    # resume for one more step: the restored average moves on, it does not restart
    module2 = WhisfusionModule(tiny_model(overrides))
    recorder2, ema2 = Recorder(), EMA(DECAY)
    trainer2 = cpu_trainer(tmp_path, 4, [recorder2, ema2])
    trainer2.fit(
        module2,
        DataLoader(feature_batches(module.model, 3, seed=1), batch_size=None),
        ckpt_path=path,
    )
    w4 = recorder2.after_step[-1]
    moved_on = {k: DECAY * averages[k] + (1 - DECAY) * w4[k] for k in w4}
    _assert_states_equal(ema2._averages(module2), moved_on, exact=False)


def test_checkpoint_saved_while_swapped_keeps_the_trained_weights(tmp_path):
    module = WhisfusionModule(tiny_model(["trainer.max_steps=2", "optim.warmup_steps=1"]))
    ema = EMA(DECAY)
    trainer = cpu_trainer(tmp_path, 2, [ema])
    trainer.fit(module, DataLoader(feature_batches(module.model, 2), batch_size=None))
    trained, averages = _decoder_state(module), dict(ema._averages(module))
    with ema.applied(module):
        _assert_states_equal(_decoder_state(module), averages)
        trainer.save_checkpoint(tmp_path / "swapped.ckpt")
    _assert_states_equal(_decoder_state(module), trained)
    ckpt = torch.load(tmp_path / "swapped.ckpt", weights_only=True)
    saved = {
        k[len("model.decoder.") :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.decoder.")
    }
    _assert_states_equal(saved, trained)
    _assert_states_equal(ckpt[EMA_KEY], averages)

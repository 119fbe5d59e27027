import errno
import os

import pytest
import torch

from whisfusion import checkpoint_io
from whisfusion.checkpoint_io import AtomicCheckpointIO, atomic_torch_save


def _state(value: float) -> dict:
    return {"global_step": int(value), "w": torch.full((64, 64), value)}


def test_save_replaces_and_loads(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(_state(1.0), path)
    io.save_checkpoint(_state(2.0), path)
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 2 and torch.equal(loaded["w"], _state(2.0)["w"])
    assert os.listdir(path.parent) == ["last.ckpt"]


def test_file_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_torch_save(_state(1.0), tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644


def test_failure_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), path)
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"half a checkpoint" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the temporary file is gone


def test_interrupt_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save(_state(1.0), path)

    def interrupted(obj, f):
        f.write(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(_state(2.0), path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(_state(1.0), tmp_path / "a.ckpt", storage_options={})

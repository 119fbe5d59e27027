"""Checkpoint writes that never leave a partial file behind.

A checkpoint is written to a temporary file in the target's own directory, flushed to disk
(fsync), then renamed over the target with `os.replace`, which is atomic on POSIX file systems
when both names are in one directory. A crash, a `kill -9` or a full disk during the write
therefore leaves either the previous checkpoint or the new one, never a truncated mix, and a
requeued job can always load `last.ckpt`. The directory is fsynced after the rename so the new
name survives a node crash too.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)` through a same-directory temporary file and `os.replace`.

    On any failure the temporary file is removed and the error re-raised; `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never write into someone else's file; mode 0o666 less the umask, like open().
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO` that writes local checkpoints with `atomic_torch_save`.

    Remote URLs (s3://, gs://, ...) keep Lightning's own fsspec transaction: object stores
    publish an object only when its upload completes.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options (got {storage_options!r})"
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))

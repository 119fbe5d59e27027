"""Samples read from shards and samples delivered in batches by every (rank, worker) stream.

    python tests/stream_reads_probe.py DATA_ROOT WORLD_SIZE WORKERS BATCHES

Runs the training DataLoader of each rank of a WORLD_SIZE job (WORKERS worker processes each)
for BATCHES batches and prints one JSON line:
    {"from_tars": .., "read": .., "yielded": .., "ids": [[..], ..] (per rank)}
`from_tars` counts every sample any worker took out of a tar file (whatever the stream did with
it), `read` the streams' own read counter. Its own process, so that the DataLoader workers are
forked from a small parent and share the tar counter.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from itertools import islice
from pathlib import Path

import torch

from whisfusion.config import CanvasConfig, DataConfig
from whisfusion.data import stats as S
from whisfusion.data import stream
from whisfusion.data.datamodule import WhisfusionDataModule
from whisfusion.tokenizer import Tokenizer

FROM_TARS = multiprocessing.Value("q", 0)
_iter_shard = stream.iter_shard


def _counting_iter_shard(path, on_error):
    for raw in _iter_shard(path, on_error):
        with FROM_TARS.get_lock():
            FROM_TARS.value += 1
        yield raw


stream.iter_shard = _counting_iter_shard


def main(root: Path, world_size: int, workers: int, batches: int) -> None:
    torch.set_num_threads(1)
    tok = Tokenizer.from_file(root / "tokenizer.model")
    canvas = CanvasConfig(r_max=json.loads((root / "stats.json").read_text())["r_max"])
    cfg = DataConfig(
        root=str(root), batch_size=4, num_workers=workers, shuffle_buffer=4, bucket_edges=[30.0]
    )
    read = yielded = 0
    ids = []
    for rank in range(world_size):
        dm = WhisfusionDataModule(cfg, canvas, tok, rank=rank, world_size=world_size)
        dm.setup("fit")
        mine = []
        for batch in islice(iter(dm.train_dataloader()), batches):
            read += batch["stats"].get(S.READ, 0)
            mine += batch["ids"]
        yielded += len(mine)
        ids.append(mine)
    print(json.dumps({"from_tars": FROM_TARS.value, "read": read, "yielded": yielded, "ids": ids}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(int(a) for a in sys.argv[2:5]))

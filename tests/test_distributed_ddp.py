"""Two-process CPU DDP (gloo) runs of the real training command."""

import pytest
import torch
from train_fixtures import (
    finish,
    free_port,
    slurm_env,
    start_train,
    steps,
    tiny_data_dir,
    train_args,
)


@pytest.mark.slow
def test_two_ranks_read_their_own_data_and_stay_identical(tmp_path):
    """Lightning launches the second rank itself. Rank 1's loss is NaN at step 2: both ranks
    skip that step together, and both end with the same weights."""
    data = tiny_data_dir(tmp_path / "data")
    probe = tmp_path / "probe"
    args = train_args(data, tmp_path / "run", "trainer.max_steps=5", "trainer.devices=2")
    rc, out = finish(start_train([*args, "trainer.strategy=ddp"], probe, PROBE_NAN="1:2"))
    assert rc == 0, out[-4000:]
    assert "world size 2 = 1 node(s) x 2 device(s)" in out
    assert "rank 0/2 (node 0, local 0)" in out and "rank 1/2 (node 0, local 1)" in out

    ranks = [steps(probe, r) for r in range(2)]
    for records in ranks:
        assert [s["step"] for s in records] == [0, 1, 2, 3, 4]
        assert [s["skipped"] for s in records] == [0, 0, 0, 1, 1]
    # each rank draws its own stream: no step sees the same batch on both ranks
    assert all(a["ids"] != b["ids"] for a, b in zip(*ranks, strict=True))
    assert [s["ids"] for s in ranks[0]] != [s["ids"] for s in ranks[1]]

    final = [torch.load(probe / f"decoder-rank{r}.pt") for r in range(2)]
    start = torch.load(probe / "decoder-start-rank0.pt")
    for name, value in final[0].items():
        assert torch.equal(value, final[1][name]), name  # gradients were averaged across ranks
    assert any(not torch.equal(v, start[k]) for k, v in final[0].items())
    assert all(torch.isfinite(v).all() for v in final[0].values())


@pytest.mark.slow
def test_ranks_started_on_different_configs_fail_fast(tmp_path):
    """Two SLURM tasks, the second with another learning rate: both stop at start-up with a
    message naming the config and rank 1, instead of training apart or hanging."""
    data = tiny_data_dir(tmp_path / "data", shards_per_lang=1)
    args = train_args(data, tmp_path / "run", "trainer.max_steps=5", "trainer.devices=2")
    args += ["trainer.strategy=ddp"]
    port = free_port()
    procs = [
        start_train(args + extra, tmp_path / "probe", **slurm_env(rank, 2, "77", port))
        for rank, extra in enumerate([[], ["optim.lr=0.5"]])
    ]
    outs = [finish(p, timeout=120) for p in procs]
    for rc, out in outs:
        assert rc != 0
        assert "config differs from rank 0 on rank(s) 1" in out, out[-3000:]
        assert "tokenizer differs" not in out and "shards differs" not in out
    assert not steps(tmp_path / "probe", 0)

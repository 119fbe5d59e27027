"""Frozen-encoder feature cache: round trip, misses, corrupt files, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from whisfusion.data.feature_cache import FeatureCache

SHA = "0123456789abcdef" + "f" * 48


def test_round_trip_and_misses(tmp_path):
    cache = FeatureCache(tmp_path, SHA)
    feats = [torch.randn(7, 4), torch.randn(3, 4)]
    cache.put(["a", "b/c.d"], feats)
    got = cache.get(["a", "missing", "b/c.d"])
    assert got[1] is None
    for want, have in zip(feats, [got[0], got[2]], strict=True):
        assert have.dtype == torch.float16 and have.shape == want.shape
        assert torch.equal(have, want.to(torch.float16))
    assert (tmp_path / SHA[:16] / "a.pt").is_file()
    assert FeatureCache(tmp_path, "f" * 64).get(["a"]) == [None]  # another encoder
    assert cache.path("b/c.d") != cache.path("b_c_d")  # unsafe ids never share a file


def test_corrupt_file_is_a_miss(tmp_path):
    cache = FeatureCache(tmp_path, SHA)
    cache.path("x").write_bytes(b"half a file")
    assert cache.get(["x"]) == [None]
    with pytest.raises(ValueError, match="shape"):
        cache.put(["y"], [torch.zeros(2, 3, 4)])


def _writer(root, value):
    cache = FeatureCache(root, SHA)
    for _ in range(20):
        cache.put(["shared"], [torch.full((50, 8), float(value))])


def test_concurrent_writers_leave_a_whole_file(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, v)) for v in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    (feats,) = FeatureCache(tmp_path, SHA).get(["shared"])
    assert feats is not None and feats.shape == (50, 8)
    assert feats.unique().tolist() in ([1.0], [2.0])
    assert not list((tmp_path / SHA[:16]).glob("*.tmp"))

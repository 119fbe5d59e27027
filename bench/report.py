"""Markdown report of a benchmark run, and its section in bench/RESULTS.md."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _threads(n: int) -> str:
    return f"{n} thread" + ("" if n == 1 else "s")


def _machine_line(machine: dict) -> str:
    device = machine["gpu"] or machine["device"]
    load = machine["load_average_at_start"]
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {device}; torch "
        f"{machine['versions']['torch']} with {_threads(machine['torch_threads'])}; "
        f"load average (1/5/15 min) {'/'.join(map(str, load))} at the start, "
        f"{'/'.join(map(str, machine['load_average_at_end']))} at the end"
        + (" (**taken while other work ran on the machine**)" if machine["under_load"] else "")
        + "."
    )


def _settings_lines(result: dict) -> list[str]:
    s = result["settings"]
    return [
        f"Every decoder reads the same encoder output: the {s['encoder']} encoder "
        f"({'real' if s['encoder_real_weights'] else 'random'} weights) on the 30 s window "
        f"({s['features_frames']} frames) of a {s['clip_s'][0]} s {s['audio']} clip, repeated over "
        f"the batch. {s['precision']}. The Transformers and PDD decoders have random weights "
        "(their cost does not depend on them).",
        "AR: Hugging Face `WhisperForConditionalGeneration` with random weights, greedy, KV "
        "cache, one token per forward, forced to exactly N tokens (no EOS stop)"
        + (
            "; also Whisper-base in CTranslate2 (faster-whisper's engine, real weights, "
            "`ct2 float32` / `ct2 int8`), the same forced greedy decoding"
            if any(" ct2 " in r["decoder"] for r in result["measurements"])
            else ""
        )
        + ". PDD: `pdd_decode` with "
        "`low_confidence` remasking, K candidates per utterance, T steps, canvas L = N + margin "
        "rounded up to 8 (the canvas rule), "
        + _keys_note(s.get("pdd_kv_refresh", 1))
        + ". Both: token ids out; detokenizing and choosing "
        "among candidates are not timed.",
        f"Each (decoder, batch) is warmed up ({s['warmup']} run) before its timings"
        + (
            f", and each measurement by {s['shape_warmup']} run at its own shape"
            if s.get("shape_warmup")
            else ""
        )
        + f"; each time is the median of {s['repeats']} runs, fewer once they add up to "
        f"{s['max_time_s']:g} s (at least one). `torch.set_num_threads({s['threads']})`"
        + threads_note(s["threads"], result["machine"])
        + ", `torch.inference_mode()`.",
    ]


def _keys_note(refresh: int) -> str:
    if refresh <= 1:
        return "self-attention keys recomputed at every step (the paper's decoding)"
    return (
        f"self-attention keys recomputed every {refresh} steps (`decode.kv_refresh`), in "
        "between only the positions a step reads and those just committed"
    )


def threads_note(threads: int, machine: dict) -> str:
    """Why fewer threads than cores ran: busy cores at the start, else the caller's choice."""
    cores = machine["cores_usable"]
    if threads >= cores:
        return ""
    if machine.get("under_load"):
        return (
            f" (not {cores}: the other cores were busy with other work at the start, and "
            "threads that wait on a busy core stall every parallel op)"
        )
    return f" (of {cores} cores, as asked)"


def _summary_lines(result: dict) -> list[str]:
    rec = result["summary"]["recommendation"]
    lines = []
    if rec is not None:
        judge = " and ".join(f"the Transformers {name} decoder" for name in rec["judged_against"])
        verdict = (
            f"the most candidates that keep PDD faster than {judge} at every N and batch"
            if rec["beats_ar"]
            else f"even one candidate is slower than {judge} somewhere"
        )
        steps_note = (
            f"T = {rec['tuned_steps']} is the step count the method is tuned for; fewer steps "
            "are faster but commit more tokens per step, untested for accuracy"
            if rec["steps"] == rec["tuned_steps"]
            else f"T = {rec['tuned_steps']} was not measured; the nearest T above it, else the "
            "largest, stands in"
        )
        lines.append(
            f"**Default for `{rec['pdd']}`: T = {rec['steps']}, K = {rec['candidates']}** "
            f"({verdict}; {steps_note}). AR time / PDD time:"
        )
        for entry in rec["speedup"]:
            parts = ", ".join(f"N={n}: {x:.1f}x" for n, x in entry["by_length"].items())
            lines.append(f"- vs {entry['ar']}, batch {entry['batch']}: {parts}")
    floors = [
        f"{r['window']} window {_ms(r['median_s'])} ms at batch {r['batch']}"
        for r in result["measurements"]
        if r["family"] == "encoder"
    ]
    if floors:
        lines += ["", "Encoder alone, the floor under any decoder: " + "; ".join(floors) + "."]
    return lines


def _crossing_table(comps: Sequence[dict]) -> str:
    ks = sorted({c["candidates"] for c in comps})
    groups: dict[tuple, dict[int, str]] = {}
    for c in comps:
        key = (c["pdd"], c["ar"], c["batch"], c["steps"])
        groups.setdefault(key, {})[c["candidates"]] = c["crossing"]["text"]
    rows = [[*key, *(cells.get(k, "") for k in ks)] for key, cells in groups.items()]
    return _table(["PDD", "vs AR", "batch", "T", *(f"K={k}" for k in ks)], rows)


def _ratio_table(comps: Sequence[dict], lengths: Sequence[int]) -> str:
    rows = []
    for c in comps:
        by_n = dict(zip(c["lengths"], c["ratios"], strict=True))
        rows.append(
            [
                c["pdd"],
                c["ar"],
                c["batch"],
                c["steps"],
                c["candidates"],
                *(f"{by_n[n]:.2f}" if n in by_n else "" for n in lengths),
            ]
        )
    return _table(["PDD", "vs AR", "batch", "T", "K", *(f"N={n}" for n in lengths)], rows)


def _time_table(rows: Sequence[dict], lengths: Sequence[int]) -> str:
    groups: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["family"] in ("ar", "pdd"):
            key = (
                r["decoder"],
                r["family"].upper(),
                r["batch"],
                r.get("steps", "-"),
                r.get("candidates", "-"),
            )
            groups.setdefault(key, {})[r["n_tokens"]] = r["median_s"]
    body = [[*key, *(_ms(t[n]) if n in t else "" for n in lengths)] for key, t in groups.items()]
    return _table(["decoder", "kind", "batch", "T", "K", *(f"N={n}" for n in lengths)], body)


def _encoder_table(rows: Sequence[dict]) -> str:
    body = [
        [r["decoder"], r["window"], r["audio_s"], r["frames"], r["batch"], _ms(r["median_s"])]
        for r in rows
        if r["family"] == "encoder"
    ]
    return _table(["encoder", "window", "clip (s)", "frames", "batch", "ms"], body)


def _reference_lines(result: dict) -> list[str]:
    ref = result["reference"]
    if ref["rows"] is None:
        return [f"Not timed: {ref['reason']}."]
    body = [
        [
            r["compute_type"],
            r["beam_size"],
            r["clips"],
            r["audio_s"],
            _ms(r["median_s"]),
            f"{r['rtfx']:.1f}",
            "/".join(map(str, r["tokens_per_clip"])),
        ]
        for r in ref["rows"]
    ]
    versions = result["machine"]["versions"]
    return [
        f"faster-whisper {versions['faster-whisper']} (CTranslate2 {versions['ctranslate2']}) on "
        "the real Whisper-base weights, end to end (log-mel, 30 s encoder window, decoding, "
        f"text), the {ref['rows'][0]['clips']} clips one after another, "
        f"{_threads(result['settings']['threads'])}:",
        "",
        _table(["compute", "beam", "clips", "audio (s)", "ms", "RTFx", "tokens per clip"], body),
    ]


def render_markdown(result: dict) -> str:
    """The whole report: machine, method, summary, ratio / time / encoder / reference tables."""
    lengths = result["settings"]["lengths"]
    # the tables compare with the profile's own AR decoders (same framework and precision)
    own = {shape["name"] for shape in result["settings"]["ar"]}
    comps = [c for c in result["summary"]["comparisons"] if c["ar"] in own]
    parts = [
        f"## Decoding speed: {result['profile']} profile ({result['date']})",
        "",
        _machine_line(result["machine"]),
        "",
        *_settings_lines(result),
        "",
        "### Summary",
        "",
        *_summary_lines(result),
        "",
        "Where PDD is faster than AR, by transcript length N (a crossing is estimated between "
        "the measured lengths in brackets):",
        "",
        _crossing_table(comps),
        "",
        "### PDD time / AR time (below 1: PDD is faster)",
        "",
        _ratio_table(comps, lengths),
        "",
        "### Decoder times (ms per batch)",
        "",
        _time_table(result["measurements"], lengths),
        "",
        "### Encoder alone (the floor for any decoder; ms per batch, log-mel included)",
        "",
        _encoder_table(result["measurements"]),
        "",
        "### faster-whisper reference",
        "",
        *_reference_lines(result),
        "",
    ]
    return "\n".join(parts)


def _markers(profile: str) -> tuple[str, str]:
    return f"<!-- bench:{profile}:start -->", f"<!-- bench:{profile}:end -->"


RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Written by `make bench` (CPU) and `python -m bench.decoding --device cuda` (GPU); each run\n"
    "replaces its own profile's section. Raw measurements: `bench/out/decoding.json`.\n"
)


def update_results(path: Path, profile: str, markdown: str) -> None:
    """Put `markdown` in `path` as `profile`'s section, keeping every other section."""
    start, end = _markers(profile)
    section = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.is_file() else RESULTS_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def render_e2e_markdown(result: dict) -> str:
    """The end-to-end section: each system's wall time per batch size, RTFx and the ratios."""
    e2e, machine = result["e2e"], result["machine"]
    decode = e2e["decode"]
    clips = e2e["clips_s"]
    lines = [
        f"## End to end: {result['profile']} profile ({result['date']})",
        "",
        _machine_line(machine),
        "",
        f"{len(clips)} {e2e['audio']} clips of {min(clips)} to {max(clips)} s "
        f"({sum(clips):.1f} s in all), each system on the same clips and device, "
        f"`torch.set_num_threads({result['threads']})`. whisfusion: `{e2e['config']}`'s "
        f"pipeline (encoder {e2e['encoder']}, "
        f"{e2e.get('decoder', 'random decoder weights')}), T = {decode['steps']}, "
        f"K = {decode['candidates']}, {decode.get('blocks', 1)} block(s), self-attention "
        f"keys recomputed every {decode.get('kv_refresh', 1)} step(s), "
        f"{decode['select']} selection, decode.dtype {decode['dtype']}"
        f"{' with int8 decoder weights' if decode.get('int8') else ''}, with selection and "
        "detokenizing. Encoder: the log-mel and encoder seconds inside whisfusion's run (the "
        f"floor). Each row is the median of {e2e.get('rounds', 1)} timed passes over every "
        "clip, the systems taking turns (one pass each per round), after an untimed one.",
        "",
    ]
    if e2e.get("ct2_not_timed"):
        lines += [f"CTranslate2 not timed: {e2e['ct2_not_timed']}.", ""]
    body = []
    for batch in e2e["batches"]:
        rows = [r for r in e2e["rows"] if r["batch"] == batch]
        ours = next(r for r in rows if r["system"] == "whisfusion")
        floor = ours["stages"].get("encode", 0.0)
        body.append(
            [batch, "encoder alone", f"{floor:.2f}", f"{ours['audio_s'] / floor:.1f}", "", ""]
        )
        for r in rows:
            body.append(
                [
                    batch,
                    r["system"],
                    f"{r['wall_s']:.2f}",
                    f"{r['audio_s'] / r['wall_s']:.1f}",
                    f"{r['wall_s'] / floor:.2f}",
                    f"{r['wall_s'] / ours['wall_s']:.2f}",
                ]
            )
    header = ["batch", "system", "s", "RTFx", "x encoder", "x whisfusion"]
    lines += [
        _table(header, body),
        "",
        "x encoder: wall time over the encoder's (whisfusion's ideal is 1); x whisfusion: wall "
        "time over whisfusion's (above 1: whisfusion is faster).",
        f"Load average at the end: {'/'.join(map(str, e2e['load_average_at_end']))}.",
    ]
    return "\n".join(lines) + "\n"

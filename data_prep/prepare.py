"""Stage-gated data preparation: raw corpora -> manifests -> tokenizer -> WebDataset shards.

    python -m data_prep.prepare librispeech:/corpora/LibriSpeech \\
        mls:/corpora/mls commonvoice:/corpora/cv-corpus-17.0 fleurs:/corpora/fleurs \\
        --out data/big --config configs/large.yaml --jobs 16
    python -m data_prep.prepare demo --out data/demo          # the synthesized demo corpus
    python -m data_prep.prepare jsonl:/my/manifests --out data/mine --stage 3 --stop-stage 4

A SOURCE is KIND[:ROOT[:TRAIN_SPLITS[:VALID_SPLITS]]] (comma-separated split names; layouts and
default splits in data_prep/adapters.py), or `demo`. `--corpus-dir` is the ROOT of a single
SOURCE given without one.

Stages (everything is written under --out only, so it is safe to delete and rerun):
    0 manifest   corpora -> common JSONL manifests; drops empty text, unknown languages,
                 unreadable / too long audio
    1 tokenizer  SentencePiece on language-balanced text; tokens/s statistics and r_max
    2 filter     drops utterances whose text does not fit the canvas of their duration
    3 shards     16 kHz FLAC + JSON WebDataset shards per split and language; index.json
    4 verify     decodes every sample of every shard
A finished stage leaves a done-marker (`<out>/.done/<stage>.json`) holding a hash of its
settings and of the stages before it: a rerun skips it, and redoes it (and every later stage)
when those settings changed. Reports go to `<out>/reports/`, the log to `<out>/prepare.log`.
"""

from __future__ import annotations

if __package__ in (None, ""):  # run as `python data_prep/prepare.py`
    import sys
    from pathlib import Path as _Path

    sys.path.insert(0, str(_Path(__file__).resolve().parent.parent))

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from data_prep.adapters import ADAPTERS, CorpusError, asterisk_transcripts, default_splits
from data_prep.demo_corpus import LONG_SPLIT, DemoConfig, build_demo_corpus, corpus_report
from data_prep.settings import PrepSettings, Source
from data_prep.stages import STAGES, PrepError
from whisfusion.config import CanvasConfig, load_config
from whisfusion.data.shards import SPLITS, write_json_atomic
from whisfusion.tokenizer import MODEL_TYPES, check_model_type

log = logging.getLogger("data_prep")

# Languages of the human-speech evaluation set (asterisk-core-sounds-<lang>, one speaker each);
# the packages' other languages are never read, so that no choice is made on them.
HUMAN_LANGUAGES = ("it", "ru")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE = "%Y-%m-%d %H:%M:%S"


def _stage_hash(previous: str, inputs: dict) -> str:
    text = json.dumps({"previous": previous, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _done_hash(out: Path, name: str) -> str | None:
    path = out / ".done" / f"{name}.json"
    return json.loads(path.read_text())["hash"] if path.is_file() else None


def run(
    s: PrepSettings, stage: int = 0, stop_stage: int = len(STAGES) - 1, redo: bool = False
) -> dict[str, dict]:
    """Run stages `stage..stop_stage`, skipping those done with the same settings.

    Args:
        redo: run the selected stages even when they are done.
    Returns:
        The report of every stage done so far, by stage name.
    Raises:
        PrepError: a stage before `stage` is not done with these settings, or a stage failed.
    """
    try:  # before stage 0, which can take hours on a large corpus
        check_model_type(s.model_type)
    except ValueError as err:
        raise PrepError(str(err)) from None
    s.out.mkdir(parents=True, exist_ok=True)
    previous = ""
    for num, (name, fn) in enumerate(STAGES):
        stage_hash = _stage_hash(previous, s.stage_inputs(name))
        previous = stage_hash
        done = _done_hash(s.out, name)
        if num < stage:
            if done != stage_hash:
                raise PrepError(
                    f"stage {num} ({name}) is not done in {s.out} with these settings: "
                    f"start at --stage {num}"
                )
            continue
        if num > stop_stage:
            break
        if done == stage_hash and not redo:
            log.info("stage %d (%s): done before with the same settings, skipped", num, name)
            continue
        if done is not None and done != stage_hash:
            log.warning("stage %d (%s): settings changed since it was done: redoing it", num, name)
        for later, _ in STAGES[num:]:  # this stage's output changes: later ones are stale
            (s.out / ".done" / f"{later}.json").unlink(missing_ok=True)
        log.info("stage %d (%s): start", num, name)
        start = time.perf_counter()
        report = fn(s, stage_hash)
        report["seconds"] = round(time.perf_counter() - start, 2)
        write_json_atomic(s.out / "reports" / f"{name}.json", report)
        write_json_atomic(s.out / ".done" / f"{name}.json", {"hash": stage_hash})
        log.info("stage %d (%s): done in %.1f s", num, name, report["seconds"])
    reports = {
        name: json.loads((s.out / "reports" / f"{name}.json").read_text())
        for name, _ in STAGES
        if (s.out / "reports" / f"{name}.json").is_file()
    }
    for line in summary(reports):
        log.info("%s", line)
    return reports


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return (
        f"{sum(counts.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
    )


def _kept(kept: dict[str, dict[str, dict]]) -> str:
    parts = []
    for split, langs in kept.items():
        n = sum(t["utterances"] for t in langs.values())
        hours = sum(t.get("hours", 0.0) for t in langs.values())
        parts.append(f"{split} {n} ({hours:.2f} h, {len(langs)} languages)")
    return ", ".join(parts)


def summary(reports: dict[str, dict[str, Any]]) -> list[str]:
    """Closing summary: what each stage read, kept and dropped, and why."""
    lines = ["summary:"]
    if "manifest" in reports:
        r = reports["manifest"]
        lines.append(f"  manifest : read {r['read']}; kept {_kept(r['kept'])}")
        lines.append(f"             dropped {_counts(r['dropped'])}")
    if "tokenizer" in reports:
        r = reports["tokenizer"]
        p99 = ", ".join(
            f"{lang} {v['p99']}" for lang, v in r["tokens_per_second"].items() if lang != "all"
        )
        lines.append(
            f"  tokenizer: vocab {r['tokenizer']['vocab_size']}, "
            f"{r['tokenizer']['lines_per_language']} lines per language; r_max {r['r_max']} "
            f"tokens/s; p99 by language: {p99}"
        )
    if "filter" in reports:
        r = reports["filter"]
        lines.append(f"  filter   : kept {_kept(r['kept'])}; dropped {_counts(r['dropped'])}")
    if "shards" in reports:
        r = reports["shards"]
        per = "; ".join(
            f"{split} {r['shards'][split]} shards, "
            f"{sum(t['samples'] for t in langs.values())} samples, "
            f"{sum(t['hours'] for t in langs.values()):.2f} h"
            for split, langs in r["splits"].items()
        )
        lines.append(
            f"  shards   : {per}; {r['bytes'] / 1e6:.1f} MB; dropped {_counts(r['dropped'])}; "
            f"{r['hours_per_cpu_second']:.4f} h of audio per CPU-second"
        )
    if "verify" in reports:
        r = reports["verify"]
        lines.append(f"  verify   : {r['shards']} shards, {r['samples']} samples, all sound")
    return lines


def prepare_demo(
    data_dir: str | Path,
    languages: list[str],
    train_per_lang: int,
    valid_per_lang: int,
    vocab_size: int,
    seed: int,
    *,
    test_per_lang: int | None = None,
    jobs: int = 2,
    model_type: str | None = None,
    vocabulary: int | None = None,
    real_share: float | None = None,
    train_passages: int | None = None,
    canvas: CanvasConfig | None = None,
    max_duration: float | None = None,
    human_root: Path | None = Path("/"),
) -> Path:
    """Build the synthesized demo corpus under `<data_dir>/corpus` and run every stage on it.

    Done stages (and an up-to-date corpus) are skipped, so this is cheap to call before every
    training run. Returns `data_dir` (shards of the splits train, valid, test and long, index.json,
    tokenizer.model, stats.json, language_tokens.json, reports/corpus.json).
    `test_per_lang`, `vocabulary`, `real_share`, `train_passages` (DemoConfig's
    `train_passages_per_lang`): DemoConfig's (None: its default).
    `model_type`: SentencePiece model type (None: PrepSettings' default).
    `human_root`: where the asterisk-core-sounds packages are installed (`/`): their Italian
    and Russian prompts become the evaluation-only split `human` (a language whose package is
    missing is left out, with a warning); None: no human split.
    """
    data_dir = Path(data_dir)
    demo = DemoConfig(
        languages=list(languages),
        train_per_lang=train_per_lang,
        valid_per_lang=valid_per_lang,
        seed=seed,
        jobs=jobs,
        **({} if real_share is None else {"real_share": real_share}),
    )
    if test_per_lang is not None:
        demo.test_per_lang = test_per_lang
    if vocabulary is not None:
        demo.vocabulary = vocabulary
    if train_passages is not None:
        demo.train_passages_per_lang = train_passages
    corpus = build_demo_corpus(data_dir / "corpus", demo)
    sources = [Source("jsonl", corpus, ["train"], ["valid"], test=["test"], long=[LONG_SPLIT])]
    human = human_languages(human_root, languages) if human_root is not None else []
    if human:
        sources.append(Source("asterisk", human_root, [], [], human=human))
    settings = PrepSettings(
        out=data_dir,
        sources=sources,
        languages=list(languages),
        vocab_size=vocab_size,
        seed=seed,
        jobs=jobs,
        corpus_tag=demo.fingerprint(),
    )
    if model_type is not None:
        settings.model_type = model_type
    if canvas is not None:
        settings.canvas = canvas
    if max_duration is not None:
        settings.max_duration = max_duration
    run(settings)
    write_corpus_report(data_dir)
    return data_dir


def human_languages(root: Path, languages: list[str]) -> list[str]:
    """The languages of HUMAN_LANGUAGES among `languages` whose asterisk-core-sounds package
    is installed under `root`."""
    found = []
    for lang in HUMAN_LANGUAGES:
        if lang not in languages:
            continue
        try:
            asterisk_transcripts(root, lang)
            found.append(lang)
        except CorpusError as err:
            log.warning("no human-speech evaluation set for '%s': %s", lang, err)
    return found


def write_corpus_report(data_dir: Path) -> dict:
    """`reports/corpus.json`: per split and language the size, distinct words (zh / ja:
    characters), voices, and for held-out splits the out-of-vocabulary rate against the
    training transcripts and the voices they share with training (from the filtered
    manifests, so it describes what the shards hold)."""
    rows = {
        split: [
            json.loads(line)
            for path in sorted((data_dir / "manifests" / split).glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()
        ]
        for split in SPLITS
    }
    report = corpus_report({split: r for split, r in rows.items() if r or split == "train"})
    write_json_atomic(data_dir / "reports" / "corpus.json", report)
    for split, langs in report.items():
        if split != "train":
            log.info(
                "corpus %s: out-of-vocabulary rate %s; voices shared with training: %d",
                split,
                ", ".join(f"{lang} {e['oov_rate']:.1%}" for lang, e in langs.items()),
                sum(e["voices_in_train"] for e in langs.values()),
            )
    return report


def parse_source(spec: str, corpus_dir: str | None) -> Source:
    """`KIND[:ROOT[:TRAIN_SPLITS[:VALID_SPLITS]]]` -> Source."""
    kind, *rest = spec.split(":")
    if kind not in ADAPTERS:
        raise SystemExit(f"unknown corpus kind '{kind}' in '{spec}'; known: {', '.join(ADAPTERS)}")
    root = rest[0] if rest and rest[0] else corpus_dir
    if not root:
        raise SystemExit(f"'{spec}' names no root directory: write {kind}:ROOT or --corpus-dir")
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise SystemExit(f"corpus root {root_path} is not a directory")
    train, valid = default_splits(kind, root_path)
    if len(rest) > 1 and rest[1]:
        train = rest[1].split(",")
    if len(rest) > 2 and rest[2]:
        valid = rest[2].split(",")
    return Source(kind, root_path, train, valid)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("sources", nargs="+", help="KIND[:ROOT[:TRAIN_SPLITS[:VALID_SPLITS]]] or demo")
    p.add_argument("--out", required=True, type=Path, help="data directory to write")
    p.add_argument("--corpus-dir", help="ROOT of a single source given without one")
    p.add_argument("--config", help="run config YAML: tokenizer, canvas and max_duration from it")
    p.add_argument("--stage", type=int, default=0, help="first stage to run")
    p.add_argument("--stop-stage", type=int, default=len(STAGES) - 1, help="last stage to run")
    p.add_argument("--redo", action="store_true", help="run the selected stages even if done")
    p.add_argument("--jobs", type=int, help="worker processes")
    p.add_argument("--languages", help="comma-separated language codes to keep")
    p.add_argument("--vocab-size", type=int, help="SentencePiece vocabulary size")
    p.add_argument("--model-type", choices=MODEL_TYPES, help="SentencePiece model type")
    p.add_argument("--max-duration", type=float, help="longest utterance kept (s)")
    p.add_argument("--tokenizer-lines", type=int, help="tokenizer training lines per language")
    p.add_argument("--shard-size-mb", type=float, help="target shard size (MB)")
    p.add_argument("--shard-samples", type=int, help="samples per shard (overrides size)")
    p.add_argument(
        "--streams", type=int, help="training streams (ranks x workers) to cut shards for"
    )
    p.add_argument("--seed", type=int, help="seed of sampling (and of the demo corpus)")
    demo = DemoConfig()
    p.add_argument("--train-per-lang", type=int, default=demo.train_per_lang, help="demo only")
    p.add_argument("--valid-per-lang", type=int, default=demo.valid_per_lang, help="demo only")
    p.add_argument("--test-per-lang", type=int, default=demo.test_per_lang, help="demo only")
    p.add_argument(
        "--demo-vocabulary", type=int, default=demo.vocabulary, help="demo only: words per language"
    )
    p.add_argument(
        "--real-share",
        type=_share,
        default=demo.real_share,
        help="demo only: share of training sentences from fortune files, where a language has them",
    )
    p.add_argument(
        "--train-passages",
        type=int,
        default=demo.train_passages_per_lang,
        help="demo only: training passages (2-4 utterances joined) per language",
    )
    return p


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return share


def _settings(args: argparse.Namespace) -> PrepSettings:
    s = PrepSettings(out=args.out, sources=[])
    if args.config:
        cfg = load_config(args.config)
        s.languages = list(cfg.model.tokenizer.languages)
        s.vocab_size = cfg.model.tokenizer.vocab_size
        s.model_type = cfg.model.tokenizer.model_type
        s.canvas = cfg.model.canvas
        s.max_duration = cfg.data.max_duration
    for arg, attr in [
        ("jobs", "jobs"),
        ("vocab_size", "vocab_size"),
        ("model_type", "model_type"),
        ("max_duration", "max_duration"),
        ("tokenizer_lines", "tokenizer_lines"),
        ("shard_size_mb", "shard_size_mb"),
        ("shard_samples", "shard_samples"),
        ("streams", "streams"),
        ("seed", "seed"),
    ]:
        if getattr(args, arg) is not None:
            setattr(s, attr, getattr(args, arg))
    if args.languages:
        s.languages = args.languages.split(",")
    return s


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATE)
    file_log = logging.FileHandler(args.out / "prepare.log", encoding="utf-8")
    file_log.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
    logging.getLogger().addHandler(file_log)
    s = _settings(args)
    try:
        if args.sources == ["demo"]:
            if (args.stage, args.stop_stage, args.redo) != (0, len(STAGES) - 1, False):
                raise SystemExit("demo runs every stage: --stage/--stop-stage/--redo do not apply")
            prepare_demo(
                s.out,
                s.languages,
                args.train_per_lang,
                args.valid_per_lang,
                s.vocab_size,
                s.seed,
                test_per_lang=args.test_per_lang,
                jobs=s.jobs,
                model_type=s.model_type,
                vocabulary=args.demo_vocabulary,
                real_share=args.real_share,
                train_passages=args.train_passages,
                canvas=s.canvas,
                max_duration=s.max_duration,
            )
            return
        if "demo" in args.sources:
            raise SystemExit("demo cannot be combined with other sources")
        s.sources = [parse_source(spec, args.corpus_dir) for spec in args.sources]
        run(s, args.stage, args.stop_stage, args.redo)
    except PrepError as err:
        log.error("%s", err)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

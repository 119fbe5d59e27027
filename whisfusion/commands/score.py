"""`whisfusion score REF.jsonl HYP.jsonl [--json FILE]`

Each line of either file is a JSON object with `id` and `text`; references also need `lang`
(a hypothesis's own `lang` is ignored: the reference's language decides normalization and metric).
A reference without a hypothesis is scored as an empty hypothesis (all deletions); a hypothesis
without a reference cannot be scored and is left out. Both are reported on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from whisfusion.scoring import cer_line, score_in_both_units

# Ids listed in a missing-id message.
_SHOWN_IDS = 5


def add_parser(sub) -> None:
    p = sub.add_parser(
        "score",
        help="corpus WER / CER per language and group of hypotheses against references",
        description="Score JSON-lines transcripts. Example:\n  whisfusion score "
        "data/test/ref.jsonl runs/demo/hyp.jsonl --json runs/demo/score.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ref", type=Path, help="references: one {id, text, lang} object per line")
    p.add_argument("hyp", type=Path, help="hypotheses: one {id, text[, lang]} object per line")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=run)


def read_jsonl(path: Path, need_lang: bool) -> dict[str, dict]:
    """Objects of a JSON-lines file by id; blank lines are skipped.

    Raises:
        ValueError: naming the file and line of invalid JSON, a missing or mistyped key, or a
            repeated id.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    keys = ("id", "text", "lang") if need_lang else ("id", "text")
    rows: dict[str, dict] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in keys:
                if key not in obj:
                    raise ValueError(f"{where}: missing key '{key}'")
            if not isinstance(obj["text"], str) or (need_lang and not isinstance(obj["lang"], str)):
                raise ValueError(f"{where}: 'text' and 'lang' must be strings")
            utt_id = str(obj["id"])
            if utt_id in rows:
                raise ValueError(f"{where}: id '{utt_id}' already used on an earlier line")
            rows[utt_id] = obj
    return rows


def _missing(ids: list[str], what: str) -> None:
    if ids:
        shown = ", ".join(ids[:_SHOWN_IDS]) + (", ..." if len(ids) > _SHOWN_IDS else "")
        print(f"whisfusion score: {len(ids)} {what} (first: {shown})", file=sys.stderr)


def run(args) -> int:
    try:
        refs = read_jsonl(args.ref, need_lang=True)
        hyps = read_jsonl(args.hyp, need_lang=False)
    except (ValueError, OSError) as err:
        raise SystemExit(f"whisfusion score: {err}") from None
    no_hyp = [i for i in refs if i not in hyps]
    no_ref = [i for i in hyps if i not in refs]
    _missing(no_hyp, f"references have no hypothesis in {args.hyp}; scored as empty hypotheses")
    _missing(no_ref, f"hypotheses have no reference in {args.ref}; not scored")
    scored = [
        (i, r["lang"], r["text"], hyps[i]["text"] if i in hyps else "") for i, r in refs.items()
    ]
    report, char_report = score_in_both_units(scored)
    print(report.to_markdown())
    print(f"\n{cer_line(char_report)}")
    if args.json is not None:
        data = report.to_dict()
        data["cer_every_language"] = char_report.to_dict()
        data["missing_hypotheses"] = len(no_hyp)
        data["unscored_hypotheses"] = len(no_ref)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return 0

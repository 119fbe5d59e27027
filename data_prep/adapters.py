"""Corpus adapters: raw corpus layouts -> records for the common manifest.

Each adapter is `adapter(root, split) -> Iterator[record]`, where a record is a dict with
`id, audio, text, lang, where` and optionally `speaker, duration` (`where` is `file:line`, for
messages), or `{"where", "error"}` for a line that cannot be parsed. Adapters only read text
files; audio is probed later, in worker processes (`data_prep.stages.check_records`).

Expected layouts (ROOT is what the command line names):
    librispeech  ROOT/<split>/<spk>/<chap>/<spk>-<chap>.trans.txt  + <spk>-<chap>-<utt>.flac
                 (ROOT is the `LibriSpeech` directory; splits: train-clean-100, dev-clean, ...)
    mls          ROOT/mls_<language>/<split>/transcripts.txt  + audio/<spk>/<book>/<id>.flac
                 (or ROOT is one mls_<language> directory; the `_opus` variants are read too,
                 the FLAC one is preferred when both exist)
    commonvoice  ROOT/<locale>/<split>.tsv  + clips/<path>  (header: client_id, path, sentence,
                 ..., locale; or ROOT is one <locale> directory)
    fleurs       ROOT/<lang>_<region>/<split>.tsv  + audio/<split>/<file name>  (no header:
                 id, file name, raw transcription, normalized transcription, ...; the raw
                 transcription is used; or ROOT is one language directory)
    jsonl        ROOT/<split>.jsonl: {"audio", "text", "lang"} + optional "id", "duration",
                 "speaker"; relative audio paths are relative to ROOT
    tsv          ROOT/<split>.tsv with a header naming audio, text, lang + optional id,
                 duration, speaker columns
    asterisk     the Debian packages asterisk-core-sounds-<lang> (+ -wav, -gsm or -g722):
                 ROOT/usr/share/doc/asterisk-core-sounds-<lang>/core-sounds-<lang>.txt[.gz]
                 (lines `<name>: <text>`) + ROOT/usr/share/asterisk/sounds/<lang>/<name>.wav
                 (ROOT is `/` for the installed packages; the split is the language, it or ru;
                 one speaker per language; prompts whose transcript describes a sound, is
                 annotated or lost characters are skipped, see ASTERISK_UNCLEAN)
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from whisfusion.data.manifest import safe_id

Record = dict[str, Any]

# Common Voice tsv cells can be long; the csv module's default limit is 128 KiB.
csv.field_size_limit(sys.maxsize)

MLS_LANGUAGES = {
    "english": "en",
    "german": "de",
    "dutch": "nl",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "polish": "pl",
}
# Locales whose base language code is not the part before the first "-" or "_".
LOCALE_LANGUAGES = {"zh-CN": "zh", "zh-TW": "zh", "zh-HK": "yue", "cmn": "zh"}


class CorpusError(ValueError):
    """A corpus directory that does not have the documented layout."""


def base_language(locale: str) -> str:
    """`zh-CN` -> `zh`, `pt_br` -> `pt`, `cmn_hans_cn` -> `zh`, `de` -> `de`."""
    if locale in LOCALE_LANGUAGES:
        return LOCALE_LANGUAGES[locale]
    base = re.split(r"[-_]", locale)[0].lower()
    return LOCALE_LANGUAGES.get(base, base)


def _split_dirs(root: Path, marker: str) -> list[Path]:
    """`[root]` if `root/marker` exists, else the subdirectories of root that have it."""
    if (root / marker).exists():
        return [root]
    found = sorted(d for d in root.iterdir() if d.is_dir() and (d / marker).exists())
    if not found:
        raise CorpusError(f"{root}: neither it nor any subdirectory holds {marker}")
    return found


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.strip():
                yield lineno, line


def librispeech(root: Path, split: str) -> Iterator[Record]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise CorpusError(f"{split_dir}: no such LibriSpeech split directory")
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for lineno, line in _lines(trans):
            where = f"{trans}:{lineno}"
            uid, _, text = line.partition(" ")
            if not text:
                yield {"where": where, "error": "expected '<utterance id> <text>'"}
                continue
            yield {
                "id": f"librispeech-{safe_id(uid)}",
                "audio": str(trans.parent / f"{uid}.flac"),
                "text": text,
                "lang": "en",
                "speaker": uid.split("-")[0],
                "where": where,
            }


def _mls_dirs(root: Path, split: str) -> list[Path]:
    dirs = _split_dirs(root, f"{split}/transcripts.txt")
    names = {d.name for d in dirs}
    # the FLAC release and the Opus one hold the same utterances: read one of them
    return [d for d in dirs if not (d.name.endswith("_opus") and d.name[:-5] in names)]


def mls(root: Path, split: str) -> Iterator[Record]:
    for lang_dir in _mls_dirs(root, split):
        name = lang_dir.name.removeprefix("mls_").removesuffix("_opus")
        if name not in MLS_LANGUAGES:
            raise CorpusError(f"{lang_dir}: unknown MLS language '{name}'")
        lang = MLS_LANGUAGES[name]
        ext = "opus" if lang_dir.name.endswith("_opus") else "flac"
        trans = lang_dir / split / "transcripts.txt"
        for lineno, line in _lines(trans):
            where = f"{trans}:{lineno}"
            uid, _, text = line.partition("\t")
            parts = uid.split("_")
            if not text or len(parts) != 3:
                yield {"where": where, "error": "expected '<spk>_<book>_<utt>\\t<text>'"}
                continue
            yield {
                "id": f"mls-{lang}-{safe_id(uid)}",
                "audio": str(lang_dir / split / "audio" / parts[0] / parts[1] / f"{uid}.{ext}"),
                "text": text,
                "lang": lang,
                "speaker": parts[0],
                "where": where,
            }


def _tsv_rows(path: Path, header: list[str] | None) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file (quotes are text, not quoting)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, fieldnames=header, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            yield reader.line_num, row


def commonvoice(root: Path, split: str) -> Iterator[Record]:
    for locale_dir in _split_dirs(root, f"{split}.tsv"):
        tsv = locale_dir / f"{split}.tsv"
        for lineno, row in _tsv_rows(tsv, None):
            where = f"{tsv}:{lineno}"
            if not row.get("path") or row.get("sentence") is None:
                yield {"where": where, "error": "missing 'path' or 'sentence' column"}
                continue
            yield {
                "id": f"cv-{safe_id(Path(row['path']).stem)}",
                "audio": str(locale_dir / "clips" / row["path"]),
                "text": row["sentence"],
                "lang": base_language(row.get("locale") or locale_dir.name),
                "speaker": row.get("client_id") or None,
                "where": where,
            }


FLEURS_COLUMNS = ["id", "file", "raw", "normalized", "phonemes", "num_samples", "gender"]


def fleurs(root: Path, split: str) -> Iterator[Record]:
    for lang_dir in _split_dirs(root, f"{split}.tsv"):
        tsv = lang_dir / f"{split}.tsv"
        lang = base_language(lang_dir.name)
        for lineno, row in _tsv_rows(tsv, FLEURS_COLUMNS):
            where = f"{tsv}:{lineno}"
            if not row.get("file") or row.get("raw") is None:
                yield {"where": where, "error": "fewer than 3 tab-separated columns"}
                continue
            yield {
                "id": f"fleurs-{safe_id(lang_dir.name)}-{safe_id(Path(row['file']).stem)}",
                "audio": str(lang_dir / "audio" / split / row["file"]),
                "text": row["raw"],
                "lang": lang,
                "where": where,
            }


def _generic(row: dict[str, Any], base: Path, where: str) -> Record:
    """A jsonl / tsv row -> record (required: audio, text, lang)."""
    # an empty text is a valid row (dropped later as empty_text); a missing one is malformed
    missing = [k for k in ("audio", "lang") if not row.get(k)] + [
        k for k in ("text",) if row.get(k) is None
    ]
    if missing:
        return {"where": where, "error": f"missing {', '.join(missing)}"}
    audio = Path(row["audio"])
    audio = audio if audio.is_absolute() else base / audio
    record = {
        "id": safe_id(str(row.get("id") or audio.stem)),
        "audio": str(audio),
        "text": str(row["text"]),
        "lang": str(row["lang"]),
        "speaker": str(row["speaker"]) if row.get("speaker") not in (None, "") else None,
        "where": where,
    }
    if row.get("duration") not in (None, ""):
        try:
            record["duration"] = float(row["duration"])
        except ValueError:
            return {"where": where, "error": f"duration {row['duration']!r} is not a number"}
    return record


def jsonl(root: Path, split: str) -> Iterator[Record]:
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise CorpusError(f"{path}: no such manifest")
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield {"where": where, "error": f"not JSON ({err})"}
            continue
        if not isinstance(row, dict):
            yield {"where": where, "error": "not a JSON object"}
            continue
        yield _generic(row, root, where)


def tsv(root: Path, split: str) -> Iterator[Record]:
    path = root / f"{split}.tsv"
    if not path.is_file():
        raise CorpusError(f"{path}: no such manifest")
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    missing = [c for c in ("audio", "text", "lang") if c not in header]
    if missing:
        raise CorpusError(f"{path}: header lacks column(s) {', '.join(missing)}")
    for lineno, row in _tsv_rows(path, None):
        yield _generic(row, root, f"{path}:{lineno}")


# Asterisk prompt transcripts that do not say what the recording says: sounds and annotations
# in brackets, notes in parentheses, and a `?` inside the text (a character the file lost,
# e.g. Italian "sar? esattamente" for "sarà esattamente"; a real question mark ends the text).
ASTERISK_UNCLEAN = re.compile(r"[\[\]<>()]|\?(?=.*\w)")
# Audio formats of the asterisk-core-sounds packages that soundfile reads, preferred first.
ASTERISK_FORMATS = ("wav", "gsm")


def asterisk_transcripts(root: Path, lang: str) -> Path:
    """The transcript file of package asterisk-core-sounds-<lang> under ROOT.

    Raises:
        CorpusError: the package's transcript file is not there.
    """
    doc = root / "usr/share/doc" / f"asterisk-core-sounds-{lang}"
    for name in (f"core-sounds-{lang}.txt", f"core-sounds-{lang}.txt.gz"):
        if (doc / name).is_file():
            return doc / name
    raise CorpusError(
        f"{doc}: no core-sounds-{lang}.txt[.gz] (apt-get install asterisk-core-sounds-{lang})"
    )


def asterisk(root: Path, lang: str) -> Iterator[Record]:
    trans = asterisk_transcripts(root, lang)
    sounds = root / "usr/share/asterisk/sounds" / lang
    opener = gzip.open if trans.suffix == ".gz" else open
    with opener(trans, "rt", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith(";"):
            continue
        where = f"{trans}:{lineno}"
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            yield {"where": where, "error": "expected '<name>: <text>'"}
            continue
        text = text.strip()
        found = [sounds / f"{name.strip()}.{ext}" for ext in ASTERISK_FORMATS]
        audio = next((p for p in found if p.is_file()), None)
        if ASTERISK_UNCLEAN.search(text) or audio is None:
            continue  # no clean reference, or a prompt this package version does not ship
        yield {
            "id": f"asterisk-{lang}-{safe_id(name.strip())}",
            "audio": str(audio),
            "text": text,
            "lang": lang,
            "speaker": f"asterisk-{lang}",
            "where": where,
        }


ADAPTERS: dict[str, Callable[[Path, str], Iterator[Record]]] = {
    "librispeech": librispeech,
    "mls": mls,
    "commonvoice": commonvoice,
    "fleurs": fleurs,
    "jsonl": jsonl,
    "tsv": tsv,
    "asterisk": asterisk,
}


def default_splits(kind: str, root: Path) -> tuple[list[str], list[str]]:
    """Splits read when the command line names none: (training, validation)."""
    if kind == "librispeech":
        return sorted(d.name for d in root.glob("train-*") if d.is_dir()), ["dev-clean"]
    if kind in ("jsonl", "tsv"):
        return ["train"], ["valid"]
    return ["train"], ["dev"]

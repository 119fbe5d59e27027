"""Error rates per language and per language group, as a Markdown table or a JSON-ready dict.

Groups: English (en), CJK (zh, ja, ko; CER) and European (every other language). A group's
rate is the mean of its languages' corpus rates; the average is the mean of the groups present.
A report in characters (`unit="char"`) gives CER for every language, so that languages of every
script can be compared on one scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from whisfusion.scoring.metrics import EditCounts, reduce_shards, utterance_counts
from whisfusion.scoring.normalizers import CHAR_LANGUAGES, base_language, unit_for

# (key, title) in report order.
GROUPS = (("english", "English"), ("european", "European"), ("cjk", "CJK"))


def group_of(lang: str) -> str:
    base = base_language(lang)
    return "english" if base == "en" else "cjk" if base in CHAR_LANGUAGES else "european"


def metric_of(lang: str, unit: str | None = None) -> str:
    """ "CER" or "WER": of `unit` when given, else of the language's own unit."""
    return "CER" if (unit or unit_for(lang)) == "char" else "WER"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Report:
    # Corpus-level counts per language code.
    per_language: dict[str, EditCounts]
    # Unit of every language's counts ("char" or "word"); None = each language's own.
    unit: str | None = None

    def languages(self) -> list[str]:
        """Language codes in report order: by group, then alphabetically."""
        keys = [key for key, _ in GROUPS]
        return sorted(self.per_language, key=lambda lang: (keys.index(group_of(lang)), lang))

    def group_members(self) -> dict[str, list[str]]:
        """Languages of each group that has at least one, in report order."""
        members: dict[str, list[str]] = {}
        for lang in self.languages():
            members.setdefault(group_of(lang), []).append(lang)
        return members

    def group_rates(self) -> dict[str, float]:
        """Mean error rate of each group that has at least one language."""
        return {
            key: _mean([self.per_language[lang].rate for lang in langs])
            for key, langs in self.group_members().items()
        }

    @property
    def average(self) -> float | None:
        """Mean of the group rates present; None for an empty report."""
        return _mean(list(self.group_rates().values()))

    @property
    def language_mean(self) -> float | None:
        """Mean of the language rates, each language weighted alike; None for an empty report."""
        return _mean([c.rate for c in self.per_language.values()])

    def rates_line(self) -> str:
        """One line: every language's rate and the mean over languages, in %."""
        rates = ", ".join(
            f"{lang} {100 * self.per_language[lang].rate:.1f}" for lang in self.languages()
        )
        mean = self.language_mean
        return f"{rates}; mean over {len(self.per_language)} languages {100 * (mean or 0.0):.1f}"

    def to_dict(self) -> dict:
        """JSON-ready; rates are fractions (0.05 = 5 %)."""
        languages = {}
        for lang in self.languages():
            c = self.per_language[lang]
            languages[lang] = {
                "metric": metric_of(lang, self.unit),
                "error_rate": c.rate,
                "errors": c.errors,
                "ref_len": c.ref_len,
                "sub": c.sub,
                "del": c.dele,
                "ins": c.ins,
                "utts": c.utts,
            }
        rates = self.group_rates()
        groups = {
            key: {"error_rate": rates[key], "languages": langs}
            for key, langs in self.group_members().items()
        }
        return {
            "languages": languages,
            "groups": groups,
            "average": self.average,
            "language_mean": self.language_mean,
        }

    def to_markdown(self) -> str:
        """A language table (rates in %) followed by a group table with the average."""
        lines = [
            "| language | metric | error % | S | D | I | ref length | utts |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for lang in self.languages():
            c = self.per_language[lang]
            lines.append(
                f"| {lang} | {metric_of(lang, self.unit)} | {100 * c.rate:.2f} | {c.sub} | "
                f"{c.dele} | {c.ins} | {c.ref_len} | {c.utts} |"
            )
        lines += ["", "| group | languages | error % |", "|---|---|---:|"]
        titles, rates = dict(GROUPS), self.group_rates()
        for key, langs in self.group_members().items():
            lines.append(f"| {titles[key]} | {', '.join(langs)} | {100 * rates[key]:.2f} |")
        if self.average is not None:
            lines.append(f"| average | | {100 * self.average:.2f} |")
            lines.append(f"| mean over languages | | {100 * self.language_mean:.2f} |")
        return "\n".join(lines)


def score_utterances(items: Iterable[tuple[str, str, str, str]], unit: str | None = None) -> Report:
    """Report of (utterance id, language, reference, hypothesis) items, normalized and scored
    in `unit` (None: each language's own; "char": CER for every language).

    Raises:
        ValueError: an utterance id occurs twice.
    """
    per_utt: dict[str, tuple[str, EditCounts]] = {}
    for utt_id, lang, ref, hyp in items:
        if utt_id in per_utt:
            raise ValueError(f"utterance id '{utt_id}' occurs twice")
        per_utt[utt_id] = (lang, utterance_counts(lang, ref, hyp, unit))
    return Report(reduce_shards([per_utt]), unit)


def score_in_both_units(items: Iterable[tuple[str, str, str, str]]) -> tuple[Report, Report]:
    """`score_utterances` of the same items twice: in each language's own unit, and in
    characters for every language."""
    items = list(items)
    return score_utterances(items), score_utterances(items, unit="char")


def cer_line(char_report: Report) -> str:
    """The one-line summary of a character report: every language's CER and their mean."""
    return f"CER (characters), every language: {char_report.rates_line()}"

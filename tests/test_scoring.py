import argparse
import json

import jiwer
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from whisfusion.commands import score as score_cmd
from whisfusion.scoring import (
    EditCounts,
    Report,
    gather_counts,
    normalize,
    reduce_shards,
    score_utterances,
    utterance_counts,
)

ITEMS = [
    ("en1", "en", "Mr. Smith's colour is RED!", "mister smith's color is read"),
    ("en2", "en", "It's twenty five past two.", "its 25 past too"),
    ("en3", "en", "Hello there", ""),
    ("de1", "de", "Der Hund, der läuft.", "der hund läuft schnell"),
    ("fr1", "fr", "Ça va très bien !", "sa va très bien"),
    ("zh1", "zh", "我们 今天 去公园。", "我们今天去公圆"),
    ("ja1", "ja", "今日は いい天気", "今日はいい天気です"),
]


def per_utterance(items):
    return {i: (lang, utterance_counts(lang, ref, hyp)) for i, lang, ref, hyp in items}


def test_normalizers_are_whispers():
    text = "Mr. Smith's colour is 2 hundred, isn't it?"
    assert normalize(text, "en") == " ".join(EnglishTextNormalizer()(text).split())
    assert normalize(text, "de") == " ".join(BasicTextNormalizer()(text).split())
    assert normalize("Ça, VA!", "fr-FR") == "ça va"


def test_corpus_counts_equal_jiwer_on_normalized_text():
    report = score_utterances(ITEMS)
    for lang in ["en", "de", "fr"]:
        sel = [x for x in ITEMS if x[1] == lang]
        out = jiwer.process_words(
            [normalize(r, lang) for _, _, r, _ in sel], [normalize(h, lang) for _, _, _, h in sel]
        )
        c = report.per_language[lang]
        assert (c.sub, c.dele, c.ins) == (out.substitutions, out.deletions, out.insertions)
        assert c.rate == pytest.approx(out.wer) and c.utts == len(sel)
    for lang in ["zh", "ja"]:
        sel = [x for x in ITEMS if x[1] == lang]
        refs = [normalize(r, lang).replace(" ", "") for _, _, r, _ in sel]
        hyps = [normalize(h, lang).replace(" ", "") for _, _, _, h in sel]
        c = report.per_language[lang]
        assert c.rate == pytest.approx(jiwer.cer(refs, hyps))
        assert c.ref_len == sum(len(r) for r in refs)  # spaces are not characters here
    assert report.per_language["zh"].sub == 1 and report.per_language["ja"].ins == 2


def test_corpus_rate_is_not_a_mean_of_utterance_rates():
    ten = "a b c d e f g h i j"
    report = score_utterances([("a", "en", "one", "two"), ("b", "en", ten, ten)])
    assert report.per_language["en"].rate == pytest.approx(1 / 11)


def test_groups_and_average():
    report = score_utterances(ITEMS)
    rate = {lang: c.rate for lang, c in report.per_language.items()}
    groups = report.group_rates()
    assert list(groups) == ["english", "european", "cjk"]
    assert groups["english"] == pytest.approx(rate["en"])
    assert groups["european"] == pytest.approx((rate["de"] + rate["fr"]) / 2)
    assert groups["cjk"] == pytest.approx((rate["zh"] + rate["ja"]) / 2)
    assert report.average == pytest.approx(sum(groups.values()) / 3)
    only_de = score_utterances([x for x in ITEMS if x[1] == "de"])
    assert only_de.average == pytest.approx(rate["de"])
    assert list(only_de.group_rates()) == ["european"]
    assert Report({}).average is None


def test_empty_references_and_hypotheses():
    assert utterance_counts("en", "", "a b") == EditCounts(0, 0, 2, 0, 1)
    assert utterance_counts("de", "a b", "") == EditCounts(0, 2, 0, 2, 1)
    assert utterance_counts("zh", "", "") == EditCounts(0, 0, 0, 0, 1)
    assert utterance_counts("de", "...", "!") == EditCounts(0, 0, 0, 0, 1)  # punctuation only
    report = score_utterances([("a", "it", "", "ciao ciao"), ("b", "ko", " ", "")])
    assert report.per_language["it"].rate == 2.0 and report.per_language["ko"].rate == 0.0
    with pytest.raises(ValueError, match="'a' occurs twice"):
        score_utterances([("a", "en", "x", "x"), ("a", "en", "y", "y")])


def test_report_markdown_and_dict():
    report = score_utterances(ITEMS)
    md = report.to_markdown()
    assert "| zh | CER |" in md and "| en | WER |" in md and "| European | de, fr |" in md
    assert md.index("| en |") < md.index("| de |") < md.index("| ja |") < md.index("| zh |")
    data = json.loads(json.dumps(report.to_dict()))
    zh = report.per_language["zh"]
    assert data["languages"]["zh"] == {
        "metric": "CER",
        "error_rate": zh.rate,
        "errors": zh.errors,
        "ref_len": zh.ref_len,
        "sub": zh.sub,
        "del": zh.dele,
        "ins": zh.ins,
        "utts": 1,
    }
    assert data["groups"]["cjk"]["languages"] == ["ja", "zh"]
    assert data["average"] == pytest.approx(report.average)


def test_sharded_reduction_counts_repeated_utterances_once():
    full = per_utterance(ITEMS)
    ids = list(full)
    shards = [{i: full[i] for i in ids[:4]}, {i: full[i] for i in ids[4:] + ids[:1]}]  # en1 twice
    assert reduce_shards(shards) == reduce_shards([full]) == score_utterances(ITEMS).per_language
    assert sum(c.utts for c in reduce_shards(shards).values()) == len(ITEMS)
    assert gather_counts(full) == reduce_shards([full])  # no process group: local


def _gloo_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        full = per_utterance(ITEMS)
        ids = list(full)
        mine = ids[rank::world] + ids[:1]  # every rank repeats en1, as a padded sampler would
        totals = gather_counts({i: full[i] for i in mine})
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump({lang: list(vars(c).values()) for lang, c in totals.items()}, f)
    finally:
        dist.destroy_process_group()


def test_gather_counts_over_two_gloo_processes(tmp_path):
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    report = score_utterances(ITEMS)
    expected = {lang: list(vars(c).values()) for lang, c in report.per_language.items()}
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == expected


def write_jsonl(path, rows, extra=""):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n" + extra)
    return path


def run_score(argv):
    parser = argparse.ArgumentParser()
    score_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["score", *argv])
    return args.func(args)


def test_score_command_end_to_end(tmp_path, capsys):
    refs = [{"id": i, "lang": lang, "text": ref} for i, lang, ref, _ in ITEMS]
    hyps = [{"id": i, "text": hyp} for i, _, _, hyp in ITEMS if i != "de1"]
    hyps.append({"id": "stray", "text": "nobody asked"})
    ref = write_jsonl(tmp_path / "ref.jsonl", refs, extra="\n")
    hyp = write_jsonl(tmp_path / "hyp.jsonl", hyps)
    assert run_score([str(ref), str(hyp), "--json", str(tmp_path / "out" / "score.json")]) == 0
    out, err = capsys.readouterr()
    assert "| de | WER |" in out and "| average |" in out
    assert "1 references have no hypothesis" in err and "de1" in err
    assert "1 hypotheses have no reference" in err and "stray" in err
    data = json.loads((tmp_path / "out" / "score.json").read_text())
    assert data["missing_hypotheses"] == 1 and data["unscored_hypotheses"] == 1
    assert data["languages"]["de"]["del"] == 4  # scored as an empty hypothesis


def test_score_command_names_bad_lines(tmp_path):
    ref = write_jsonl(
        tmp_path / "ref.jsonl",
        [{"id": "a", "lang": "en", "text": "x"}],
        extra='{"id": "b", "text": "y"\n',
    )
    hyp = write_jsonl(tmp_path / "hyp.jsonl", [{"id": "a", "text": "x"}])
    with pytest.raises(SystemExit, match=r"ref.jsonl:2: not valid JSON"):
        run_score([str(ref), str(hyp)])
    write_jsonl(ref, [{"id": "a", "lang": "en", "text": "x"}, {"id": "b", "text": "y"}])
    with pytest.raises(SystemExit, match=r"ref.jsonl:2: missing key 'lang'"):
        run_score([str(ref), str(hyp)])
    write_jsonl(ref, [{"id": "a", "lang": "en", "text": "x"}])
    write_jsonl(hyp, [{"id": "a", "text": "x"}, {"id": "a", "text": "z"}])
    with pytest.raises(SystemExit, match=r"hyp.jsonl:2: id 'a' already used"):
        run_score([str(ref), str(hyp)])
    with pytest.raises(SystemExit, match="missing.jsonl"):
        run_score([str(ref), str(tmp_path / "missing.jsonl")])


def test_character_report_scores_every_language_in_characters():
    # "kat" vs "cat": one wrong word of two, one wrong character of seven ("the cat")
    assert utterance_counts("en", "the cat", "the kat").rate == 0.5
    chars = utterance_counts("en", "the cat", "the kat", "char")
    assert (chars.sub, chars.ref_len) == (1, 7)  # the space between words counts
    # scripts without spaces count the same either way
    assert utterance_counts("zh", "你好 世界", "你好世", "char") == utterance_counts(
        "zh", "你好 世界", "你好世"
    )
    report = score_utterances(ITEMS, unit="char")
    assert {report.to_dict()["languages"][lang]["metric"] for lang in report.languages()} == {"CER"}
    assert "| en | CER |" in report.to_markdown()
    rates = [c.rate for c in report.per_language.values()]
    assert report.language_mean == pytest.approx(sum(rates) / len(rates))
    line = report.rates_line()
    assert line.startswith("en ") and f"mean over {len(rates)} languages" in line
    assert Report({}).language_mean is None

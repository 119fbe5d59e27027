import random

import pytest
import torch

from whisfusion.canvas import build_canvas, pad_canvases
from whisfusion.pdd import PDDResult, best_index, canvas_for, decode_result, pdd_decode, select
from whisfusion.pdd.select import MASK_SHOWN, mbr_index, rover, rover_units, special_table
from whisfusion.tokenizer import train_tokenizer

TEXTS = {
    "en": "the cat sat on the mat",
    "de": "der Hund lief schnell nach Hause",
    "zh": "我们今天去公园散步",
}


@pytest.fixture(scope="module")
def tok():
    lines = [f"{t} {i}" for i in range(40) for t in TEXTS.values()]
    return train_tokenizer(lines, list(TEXTS), vocab_size=400)


def flat(k):
    return [[0.5]] * k


def test_rover_fixes_a_different_error_in_each_candidate():
    cands = ["a cat sat on the mat", "the cat sit on the mat", "the cat sat on the hat"]
    assert rover(cands, flat(3), "word") == "the cat sat on the mat"
    assert select(cands, flat(3), "rover", "word") == "the cat sat on the mat"


def test_rover_votes_on_insertions_and_deletions():
    cands = ["the cat sat on mat", "cat sat on the mat", "the cat sat on the mat today"]
    assert rover(cands, flat(3), "word") == "the cat sat on the mat"


def test_rover_ties_follow_confidence_rank_and_characters_for_cjk():
    cands = ["a b c", "a x c"]
    assert rover(cands, [[0.5], [0.9]], "word") == "a x c"
    assert rover(cands, [[0.9], [0.5]], "word") == "a b c"
    assert rover(["我们去公园", "我门去公园", "我们去公圆"], flat(3), "char") == "我们去公园"
    assert rover(["only one"], flat(1), "word") == "only one"


def test_mbr_picks_the_central_candidate():
    cands = ["a b y d", "a b c x", "a b c d", "z b c d"]
    assert mbr_index(cands, "word") == 2
    assert best_index(["a", "b"], flat(2), "mbr", "word") == 0  # tie -> lowest index
    cjk = ["您好嗎朋友", "你好吗朋友", "你好马朋友"]
    assert best_index(cjk, flat(3), "mbr", "char") == 1
    assert best_index(cjk, flat(3), "mbr", "word") == 0  # one word each: all tie


def test_confidence_picks_the_highest_mean():
    cands = ["x", "y", "z"]
    assert (
        best_index(cands, [[0.9, 0.1], [0.6, 0.6], torch.tensor([0.2])], "confidence", "word") == 1
    )
    assert best_index(cands, [[0.5], [0.5], [0.4]], "confidence", "word") == 0
    with pytest.raises(ValueError, match="picks no single"):
        best_index(cands, flat(3), "rover", "word")
    with pytest.raises(ValueError, match="selection method"):
        select(cands, flat(3), "vote", "word")
    with pytest.raises(ValueError, match="3 candidates with 2"):
        select(cands, flat(2), "mbr", "word")


def fixed_transcripts(tok, langs_on_canvas):
    """Target canvases of TEXTS, padded, and their padded lengths."""
    rows = []
    for lang, text in TEXTS.items():
        ids = tok.encode(text)
        rows.append(build_canvas(ids, tok.lang_id(lang), tok.eos_id, len(ids) + 3 + 2 * len(rows)))
    target, valid = pad_canvases(rows, tok.eos_id)
    lang_ids = [tok.lang_id(lang) if lang in langs_on_canvas else None for lang in TEXTS]
    return target, valid.sum(1).tolist(), lang_ids


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("method", ["confidence", "mbr", "rover"])
def test_every_strategy_and_method_return_the_models_transcript(tok, remasking, method):
    target, lengths, lang_ids = fixed_transcripts(tok, langs_on_canvas={"de"})
    k = 3
    logits = torch.nn.functional.one_hot(target, tok.vocab_size).float() * 60.0

    def denoise(tokens, cache, where):
        return logits.repeat_interleave(k, dim=0)[where]

    canvas, valid = canvas_for(lengths, tok.mask_id, tok.eos_id, lang_ids)
    res = pdd_decode(
        denoise,
        None,
        canvas,
        valid,
        mask_id=tok.mask_id,
        eos_id=tok.eos_id,
        candidates=k,
        steps=4,
        remasking=remasking,
        random_schedule=[1.0, 0.9, 0.85, 0.8],
        temperature=1.0,
        generator=torch.Generator().manual_seed(0),
        return_trajectory=True,
    )
    given = [None, "de", None]
    out = decode_result(res, tok, method, given)
    assert [t.text for t in out] == list(TEXTS.values())
    assert [t.language for t in out] == list(TEXTS)
    assert all(t.candidates == [t.text] * k for t in out)
    assert all(len(t.trajectory) == res.steps_run for t in out)
    if remasking == "low_confidence":
        assert MASK_SHOWN in out[0].trajectory[0] and MASK_SHOWN not in out[0].trajectory[-1]


def hand_result(tok, rows, confs):
    """A one-utterance PDDResult from token rows (padded with EOS) and per-position confidences."""
    length = max(len(r) for r in rows)
    tokens = torch.full((1, len(rows), length), tok.eos_id)
    conf = torch.ones(1, len(rows), length)
    for k, (r, c) in enumerate(zip(rows, confs, strict=True)):
        tokens[0, k, : len(r)] = torch.tensor(r)
        conf[0, k, : len(c)] = torch.tensor(c)
    return PDDResult(tokens, conf, torch.ones(1, length, dtype=torch.bool), 1, None)


def test_confidence_ignores_special_tokens_and_scores_silence_by_eos(tok):
    en, eos = tok.lang_id("en"), tok.eos_id
    a, b = tok.encode("the cat"), tok.encode("the mat")
    # candidate 0: sure text, unsure EOS; candidate 1: less sure text, sure EOS and language
    rows = [[en, *a, eos, eos], [en, *b, eos, eos]]
    confs = [[0.1] + [0.9] * len(a) + [0.1, 0.1], [1.0] + [0.8] * len(b) + [1.0, 1.0]]
    out = decode_result(hand_result(tok, rows, confs), tok, "confidence")[0]
    assert out.text == "the cat" and out.language == "en"
    # silence: an empty candidate sure of its EOS beats an unsure word
    rows = [[en, eos, eos, eos], [en, *a, eos]]
    confs = [[1.0, 0.95, 0.95, 0.95], [1.0] + [0.4] * len(a) + [0.9]]
    assert decode_result(hand_result(tok, rows, confs), tok, "confidence")[0].text == ""


def test_predicted_language_and_cjk_units(tok):
    zh, de = tok.lang_id("zh"), tok.lang_id("de")
    texts = ["我们今天去公圆", "我门今天去公园", "我们今天去公园"]  # word units would pick [0]
    rows = [[zh, *tok.encode(t), tok.eos_id] for t in texts]
    rows[2][0] = de  # one candidate votes for another language
    confs = [[0.9] * len(r) for r in rows]
    res = hand_result(tok, rows, confs)
    out = decode_result(res, tok, "rover")[0]
    assert out.text == "我们今天去公园" and out.language == "zh"
    assert decode_result(res, tok, "mbr", ["ja"])[0].language == "ja"


def test_vectorized_rover_matches_the_pure_python_baseline():
    from bench.selection import cjk_batch, python_rover

    rng = random.Random(1)
    batches = cjk_batch(seed=3)[:4]
    words = [" ".join(rng.choice("ab cd ef gh".split()) for _ in range(rng.randint(0, 9)))]
    batches.append(words + [" ".join(rng.sample("ab cd ef gh ij".split(), 3)) for _ in range(5)])
    for texts in batches:
        ranking = list(range(len(texts)))
        rng.shuffle(ranking)
        for unit in ("char", "word"):
            assert rover_units(texts, ranking, unit) == python_rover(texts, ranking, unit)


def test_special_table_is_built_once_per_tokenizer(tok):
    table = special_table(tok)
    assert special_table(tok) is table
    assert bool(table[tok.eos_id]) and bool(table[tok.mask_id])
    assert not bool(table[tok.encode("cat")[-1]])

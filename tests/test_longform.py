import random

import pytest

from whisfusion.longform import longest_common_run, merge_chunk_texts, plan_chunks

SR = 16000


def covered(chunks, n):
    seen = [0] * n
    for start, end in chunks:
        for i in range(start, end):
            seen[i] += 1
    return seen


def test_plan_covers_every_sample_with_the_overlap():
    n = 75 * SR
    chunks = plan_chunks(n)
    assert chunks == [(0, 30 * SR), (25 * SR, 55 * SR), (50 * SR, 75 * SR)]
    for samples in [1, 30 * SR, 30 * SR + 1, 61 * SR + 7, 300 * SR // 7]:
        chunks = plan_chunks(samples, window_s=3.0, overlap_s=1.0, sr=100)
        seen = covered(chunks, samples)
        assert min(seen) >= 1 and chunks[0][0] == 0 and chunks[-1][1] == samples
        for (s0, e0), (s1, _) in zip(chunks, chunks[1:], strict=False):
            assert e0 - s1 == 100 and e0 - s0 == 300  # full windows overlapping by 1 s
    assert plan_chunks(0) == [(0, 0)] and plan_chunks(SR) == [(0, SR)]
    with pytest.raises(ValueError, match="overlap_s"):
        plan_chunks(SR, window_s=5.0, overlap_s=5.0)


def spoken(words, step_s):
    """(word, time) pairs: one word every `step_s` seconds."""
    return [(w, (i + 0.5) * step_s) for i, w in enumerate(words)]


def chunk_texts(timed, chunks, sr=SR):
    """What an ideal recognizer hears in each chunk: the words whose centre lies inside it."""
    return [" ".join(w for w, t in timed if start <= t * sr < end) for start, end in chunks]


def test_75_s_of_unique_words_merge_back_exactly():
    words = [f"w{i}" for i in range(150)]
    chunks = plan_chunks(75 * SR)
    assert len(chunks) >= 3
    texts = chunk_texts(spoken(words, 0.5), chunks)
    assert merge_chunk_texts(texts) == " ".join(words)


def test_speech_from_a_small_vocabulary_merges_back_exactly():
    vocab = "the cat and dog saw other near old house ran a to".split()
    rng = random.Random(0)
    words = [rng.choice(vocab) for _ in range(130)]  # short shared runs everywhere
    texts = chunk_texts(spoken(words, 0.55), plan_chunks(int(130 * 0.55 * SR)))
    assert len(texts) >= 3
    assert merge_chunk_texts(texts) == " ".join(words)


def test_edge_words_and_an_error_in_the_overlap_appear_once():
    a = "one two three four five six seven eigh"  # "eight" clipped at the cut
    b = "ive six seven eight nine ten eleven twelve"  # "five" clipped at the start
    merged = merge_chunk_texts([a, b]).split()
    assert merged == "one two three four five six seven eight nine ten eleven twelve".split()
    a = "alpha beta gamma delta epsilon zeta eta theta"
    b = "epsilon zeta ETA theta iota kappa"  # the two chunks disagree on one overlap word
    merged = merge_chunk_texts([a, b]).split()
    for w in ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "iota", "kappa"]:
        assert merged.count(w) == 1
    assert merged.count("eta") + merged.count("ETA") == 1


def test_cjk_characters_and_silent_overlaps():
    text = "我们今天去公园散步然后回家吃饭晚上看书学习"
    texts = [text[:12], text[9:18], text[15:]]
    assert merge_chunk_texts(texts, unit="char") == text
    assert merge_chunk_texts(["first part", "", "second part"]) == "first part second part"
    assert merge_chunk_texts(["a b c", "x y z"]) == "a b c x y z"  # nothing shared
    # a silent overlap: one common word in both is no evidence of overlap
    a, b = "we came to the end of the story", "and the next day began"
    assert merge_chunk_texts([a, b]) == f"{a} {b}"
    assert merge_chunk_texts([]) == ""


def test_longest_common_run_prefers_the_seam():
    assert longest_common_run("x a b y".split(), "a b z".split()) == (1, 0, 2)
    # "a" occurs twice in the tail: the copy nearest the seam wins
    assert longest_common_run("a q a".split(), "a r".split()) == (2, 0, 1)
    assert longest_common_run(["a"], ["b"])[2] == 0

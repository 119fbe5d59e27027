import random

import pytest
import torch

from whisfusion.longform import (
    join_segment_texts,
    longest_common_run,
    merge_chunk_texts,
    plan_chunks,
    plan_segments,
)

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


def bursts(seconds: list[float], pause_s: float = 0.4, seed: int = 0):
    """Noise bursts (speech) separated by silent pauses; the pauses' (start, end) samples."""
    gen = torch.Generator().manual_seed(seed)
    parts, pauses, at = [], [], 0
    for k, s in enumerate(seconds):
        parts.append(0.3 * torch.randn(round(s * SR), generator=gen))
        at += parts[-1].numel()
        if k < len(seconds) - 1:
            parts.append(torch.zeros(round(pause_s * SR)))
            pauses.append((at, at + parts[-1].numel()))
            at += parts[-1].numel()
    return torch.cat(parts), pauses


def test_segments_are_cut_in_the_pauses_and_cover_the_audio():
    audio, pauses = bursts([4.0, 5.0, 3.0, 6.0, 4.5, 2.0])
    spans = plan_segments(audio, 10.0)
    assert spans[0][0] == 0 and spans[-1][1] == audio.numel()
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
    assert len(spans) >= 3 and all(0 < e - s <= 10 * SR for s, e in spans)
    for _, cut in spans[:-1]:  # every cut falls in a pause, none in a burst
        assert any(lo <= cut < hi for lo, hi in pauses), cut
    assert plan_segments(audio[: 10 * SR], 10.0) == [(0, 10 * SR)]
    # without pauses the cut still keeps every segment within the limit
    noise = 0.3 * torch.randn(25 * SR, generator=torch.Generator().manual_seed(1))
    spans = plan_segments(noise, 10.0)
    assert all(5 * SR <= e - s <= 10 * SR for s, e in spans[:-1]) and spans[-1][1] == 25 * SR
    for bad in (0.0, 31.0):
        with pytest.raises(ValueError, match="segment_s"):
            plan_segments(audio, bad)


def test_segment_texts_join_with_a_space_except_in_zh_and_ja():
    assert join_segment_texts(["Hello there.", " ", "How are you? "], "en") == (
        "Hello there. How are you?"
    )
    assert join_segment_texts(["안녕하세요.", "반갑습니다."], "ko") == "안녕하세요. 반갑습니다."
    assert join_segment_texts(["你好。", "再见。"], "zh") == "你好。再见。"
    assert join_segment_texts(["こんにちは", "。"], "ja") == "こんにちは。"

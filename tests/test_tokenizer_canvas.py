import pytest
import torch

from whisfusion.canvas import build_canvas, canvas_length, kept_width, pad_canvases
from whisfusion.config import CanvasConfig
from whisfusion.tokenizer import Tokenizer, train_tokenizer

TEXTS = {
    "en": "the quick brown fox jumps over the lazy dog",
    "de": "der schnelle braune Fuchs springt über den faulen Hund",
    "zh": "我们今天去公园散步然后回家吃饭",
    "ja": "きょうはとてもいいてんきですね",
}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    lines = [f"{t} {i}" for i in range(50) for t in TEXTS.values()]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return train_tokenizer(lines, list(TEXTS), vocab_size=400, out_path=path)


def test_special_ids(tok):
    assert tok.eos_id == 1
    assert [tok.lang_id(lang) for lang in TEXTS] == [2, 3, 4, 5]
    assert tok.id_to_lang(4) == "zh" and tok.id_to_lang(9) is None
    assert tok.mask_id == tok.vocab_size
    with pytest.raises(KeyError, match="language 'xx'"):
        tok.lang_id("xx")


def test_round_trip_keeps_case_punctuation_and_unseen_characters(tok):
    for text in ["Hello, World!", "Ærø — naïve façade?", "你好，世界。", "Ωμέγα 123"]:
        assert tok.decode(tok.encode(text)) == text


def test_decode_drops_specials(tok):
    ids = [tok.lang_id("en"), *tok.encode("the dog"), tok.eos_id, tok.eos_id, tok.mask_id]
    assert tok.decode(ids) == "the dog"


def test_file_and_bytes_round_trip(tok, tmp_path):
    again = Tokenizer.from_bytes(tok.to_bytes())
    assert again.encode("the fox") == tok.encode("the fox")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        Tokenizer.from_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.model"):
        Tokenizer.from_file(tmp_path / "missing.model")


@pytest.fixture(scope="module")
def char_tok():
    lines = [f"{t} {i}" for i in range(50) for t in TEXTS.values()]
    # vocab_size far below what the characters need: a char model must ignore it
    return train_tokenizer(
        lines, list(TEXTS), vocab_size=270, character_coverage=1.0, model_type="char"
    ), lines


def test_char_model_has_one_token_per_character(char_tok):
    tok, lines = char_tok
    ids = tok.encode("abc")
    assert [tok.sp.id_to_piece(i) for i in ids] == ["a", "b", "c"]
    assert tok.decode(ids) == "abc"
    # <unk>, <|eos|>, one token per language, 256 bytes, every character seen (space as "▁")
    assert tok.vocab_size == 2 + len(TEXTS) + 256 + len(set("".join(lines)))
    for text in ["the lazy dog", "Ærø — naïve façade?", "你好，世界。"]:
        assert tok.decode(tok.encode(text)) == text


def test_char_model_keeps_special_ids(char_tok):
    tok, _ = char_tok
    assert tok.eos_id == 1
    assert [tok.lang_id(lang) for lang in TEXTS] == [2, 3, 4, 5]
    assert tok.mask_id == tok.vocab_size
    ids = [tok.lang_id("de"), *tok.encode("der Hund"), tok.eos_id, tok.mask_id]
    assert tok.decode(ids) == "der Hund"


def test_bpe_model_round_trips():
    lines = [f"{t} {i}" for i in range(20) for t in TEXTS.values()]
    tok = train_tokenizer(lines, list(TEXTS), vocab_size=330, model_type="bpe")
    assert tok.eos_id == 1 and tok.lang_id("ja") == 5
    assert tok.decode(tok.encode("the brown Fuchs")) == "the brown Fuchs"


def test_unknown_model_type_is_named():
    with pytest.raises(
        ValueError, match="model_type must be one of unigram, bpe, char; got 'word'"
    ):
        train_tokenizer(["a b c"], ["en"], vocab_size=300, model_type="word")


def test_canvas_length_rule():
    cfg = CanvasConfig(r_max=10.0, margin=4, multiple=8, min_len=16, max_len=64)
    assert canvas_length(0.1, cfg) == 16  # clipped to min_len
    assert canvas_length(2.0, cfg) == 24  # 20 + 4 -> rounded up to 24
    assert canvas_length(100.0, cfg) == 64  # clipped to max_len
    assert all(canvas_length(d / 10, cfg) % 8 == 0 for d in range(1, 100))
    with pytest.raises(ValueError, match="r_max"):
        canvas_length(1.0, CanvasConfig(r_max=0.0))


def test_build_and_pad_canvases():
    a = build_canvas([7, 8, 9], lang_id=2, eos_id=1, length=8)
    assert a.tolist() == [2, 7, 8, 9, 1, 1, 1, 1]
    b = build_canvas([5], lang_id=None, eos_id=1, length=4)
    tokens, valid = pad_canvases([a, b], eos_id=1)
    assert tokens.shape == (2, 8) and valid.sum(1).tolist() == [8, 4]
    assert tokens[1].tolist() == [5, 1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="does not fit"):
        build_canvas(list(range(8)), lang_id=2, eos_id=1, length=8)
    assert torch.equal(pad_canvases([a], 1)[0][0], a)


def test_kept_width_keeps_the_longest_content_and_a_margin():
    content = torch.zeros(3, 10, dtype=torch.bool)
    content[0, :3] = True
    content[1, :5] = True
    content[2, 0] = True
    assert kept_width(content, 2) == 7  # row 1's five positions and two more
    assert kept_width(content, 8) == 10  # never wider than the canvas

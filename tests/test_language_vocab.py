"""Per-language output vocabularies: counts, the allowed sets, and decoding restricted to them."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from model_fixtures import LANGS, TEXTS, save_checkpoint, tiny_model

from whisfusion.language_vocab import (
    BLOCKED,
    LanguageFilter,
    LanguageVocabulary,
    blocked_bias,
    restrict_log_probs,
)
from whisfusion.model import Whisfusion
from whisfusion.options import DecodeOptions
from whisfusion.prior import HeadReading

ALIGNED = [
    "model.decoder.align_hidden=32",
    "model.decoder.align_best_path=true",
    "model.decoder.align_token_input=true",
    "model.decoder.align_logit_weight=1.0",
    "decode.candidates=3",
]
# model_fixtures.TEXTS: two sentences per language, in LANGS order
TEXTS_BY_LANG = {lang: TEXTS[2 * i : 2 * i + 2] for i, lang in enumerate(LANGS)}


def counted(model: Whisfusion) -> LanguageVocabulary:
    tok = model.tokenizer
    counts = {
        lang: Counter(i for text in texts for i in tok.encode(text))
        for lang, texts in TEXTS_BY_LANG.items()
    }
    return LanguageVocabulary.from_counts(counts, tok.languages, tok.vocab_size)


def test_counts_survive_the_json_file(tmp_path):
    vocab = LanguageVocabulary.from_counts({"en": {5: 3, 7: 1}, "de": {5: 2}}, ["en", "de"], 10)
    path = tmp_path / "language_tokens.json"
    path.write_text(json.dumps(vocab.to_dict()))
    back = LanguageVocabulary.from_file(path, ["en", "de"], 10)
    assert torch.equal(back.counts, vocab.counts) and back.counts[0, 5] == 3

    with pytest.raises(ValueError, match="counted over 10 tokens, but the tokenizer has 12"):
        LanguageVocabulary.from_file(path, ["en", "de"], 12)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="language_tokens.json: not a language token count"):
        LanguageVocabulary.from_file(path, ["en", "de"], 10)


def test_allowed_tokens_follow_the_count_threshold_per_utterance():
    vocab = LanguageVocabulary.from_counts({"en": {2: 1, 3: 5}, "de": {4: 2}}, ["en", "de"], 6)
    allowed = vocab.allowed(["en", "de", None], min_count=2, always=[1])
    assert allowed.tolist() == [
        [False, True, False, True, False, False],  # id 2 was used once: below 2
        [False, True, False, False, True, False],
        [True] * 6,  # a predicted language is not restricted
    ]
    with pytest.raises(KeyError, match="no token counts for language 'fr'"):
        vocab.allowed(["fr"], 1, [])


def test_restricted_log_probs_renormalize_over_allowed_tokens_and_keep_the_blank():
    log_probs = torch.randn(2, 5, 4 + 1).log_softmax(-1)
    allowed = torch.tensor([[True, False, True, False], [True, True, True, True]])
    out = restrict_log_probs(log_probs, allowed)

    assert torch.allclose(out.logsumexp(-1), torch.zeros(2, 5), atol=1e-6)
    assert (out[0, :, [1, 3]].exp() == 0).all()
    kept = log_probs[0, :, [0, 2, 4]]  # allowed tokens and the blank keep their proportions
    assert torch.allclose(out[0, :, [0, 2, 4]], kept - kept.logsumexp(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(out[1], log_probs[1], atol=1e-6)
    assert blocked_bias(allowed)[0, 0].tolist() == [0.0, BLOCKED, 0.0, BLOCKED]


def test_decoder_blocks_tokens_outside_the_utterances_language_on_every_candidate_row():
    model = tiny_model(ALIGNED)
    decoder, vocab = model.decoder, counted(model)
    allowed = vocab.allowed(["en", None], 1, [model.tokenizer.eos_id])
    feats, valid = torch.randn(2, 12, model.encoder.width), torch.ones(2, 12, dtype=torch.bool)
    k, length = 3, 10
    tokens = torch.full((2 * k, length), decoder.mask_id)
    where = torch.rand(2 * k, length, generator=torch.Generator().manual_seed(0)) < 0.6
    with torch.no_grad():
        free = decoder(tokens, decoder.cross_cache(feats, valid), None, where)
        cache = decoder.cross_cache(feats, valid, HeadReading(allowed=allowed))
        restricted = LanguageFilter(allowed).apply(decoder(tokens, cache, None, where), where)

    assert (cache.prior.log_probs[0, :, : allowed.shape[1]][:, ~allowed[0]].exp() == 0).all()
    english = where.nonzero()[:, 0] < k  # the positions on the first utterance's k rows
    en_rows = restricted[english]
    assert (en_rows[..., ~allowed[0]] < BLOCKED / 2).all()
    assert (en_rows[..., allowed[0]] > BLOCKED / 2).all()
    assert torch.equal(restricted[~english], free[~english])  # the other utterance: untouched


@pytest.mark.parametrize("method", ["pdd", "ctc"])
def test_transcripts_use_only_their_languages_tokens(method):
    model = tiny_model(ALIGNED)
    model.language_vocab = counted(model)
    decode = DecodeOptions.from_config(model.cfg.decode, method=method, language_vocab_min_count=1)
    feats = torch.randn(2, 40, model.encoder.width, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(2, 40, dtype=torch.bool)
    out = model.decode_features(feats, valid, [0.8, 0.8], ["en", None], decode)
    free = model.decode_features(
        feats,
        valid,
        [0.8, 0.8],
        ["en", None],
        decode.replace(language_vocab_min_count=0),
    )

    english = set("".join(TEXTS_BY_LANG["en"]))
    assert all(set(text.replace(" ", "")) <= english for text in out[0].candidates)
    assert out[1].candidates == free[1].candidates


def test_decoding_with_a_min_count_needs_the_counts_and_checkpoints_carry_them(tmp_path):
    model = tiny_model(ALIGNED)
    decode = DecodeOptions.from_config(model.cfg.decode, language_vocab_min_count=1)
    with pytest.raises(ValueError, match="language_tokens.json"):
        model.check_options(decode)
    with pytest.raises(ValueError, match="must be >= 0"):
        decode.replace(language_vocab_min_count=-1)

    model.language_vocab = counted(model)
    model.check_options(decode)
    loaded = Whisfusion.from_checkpoint(save_checkpoint(model, tmp_path / "m.ckpt"))
    assert loaded.language_vocab.languages == model.tokenizer.languages
    assert torch.equal(loaded.language_vocab.counts, model.language_vocab.counts)

"""`model.decoder.kind: whisper` end to end on a tiny random Whisper: its tokenizer, r_max, a
checkpoint that `Whisfusion.from_checkpoint` rebuilds and decodes with PDD."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import WhisperForConditionalGeneration

from tests.model_fixtures import CONFIGS, save_checkpoint, tiny_model
from tests.whisper_fixtures import tiny_whisper_config
from whisfusion.callbacks.attention_anneal import AttentionAnneal
from whisfusion.canvas import r_max_rule
from whisfusion.config import load_config
from whisfusion.decoders import build_tokenizer
from whisfusion.encoder import build_encoder
from whisfusion.model import Whisfusion
from whisfusion.optim import build_optimizer
from whisfusion.options import DecodeOptions
from whisfusion.precision import decoding_precision, kept_casts
from whisfusion.schedule import diffusion_loss
from whisfusion.tokenizer import tokenizer_from_bytes
from whisfusion.whisper_tokenizer import WhisperTokenizer, whisper_r_max

LANGS = ["en", "de", "zh"]
SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    *[f"<|{lang}|>" for lang in ["en", "zh", "de", "es"]],
    "<|transcribe|>",
    "<|notimestamps|>",
]


def byte_level_json() -> str:
    """A byte-level BPE tokenizer.json shaped like Whisper's: 256 byte tokens, no merges, then
    the special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok.to_str()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """A tiny random Whisper (Hugging Face layout) with a tokenizer.json beside it."""
    directory = tmp_path_factory.mktemp("tiny-whisper")
    (directory / "tokenizer.json").write_text(byte_level_json())
    cfg = tiny_whisper_config()
    cfg.vocab_size = 256 + len(SPECIALS)
    cfg.max_target_positions = 40
    torch.manual_seed(0)
    WhisperForConditionalGeneration(cfg).save_pretrained(directory, safe_serialization=True)
    return directory


def test_tokenizer_round_trip_and_specials(weights_dir):
    tok = WhisperTokenizer.from_weights(weights_dir, LANGS)
    text = "Größe 大 ok."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids[0] == tok.encode("a")[0]  # the leading space Whisper's transcripts begin with
    assert (tok.vocab_size, tok.mask_id, tok.eos_id) == (264, 264, 256)
    assert tok.lang_id("de") == 260 and tok.id_to_lang(260) == "de"
    assert tok.id_to_lang(ids[1]) is None
    assert tok.is_special(tok.eos_id) and not tok.is_special(ids[1])
    assert tok.decode([tok.lang_id("en"), *ids, tok.eos_id, tok.mask_id]) == text
    again = tokenizer_from_bytes(tok.to_bytes())
    assert isinstance(again, WhisperTokenizer)
    assert again.languages == LANGS and again.encode(text) == ids


def test_a_language_whisper_lacks_is_refused(weights_dir):
    with pytest.raises(ValueError, match="<\\|xx\\|>"):
        WhisperTokenizer.from_weights(weights_dir, ["en", "xx"])


def test_r_max_in_whisper_tokens(weights_dir, tmp_path):
    tok = WhisperTokenizer.from_weights(weights_dir, LANGS)
    train = tmp_path / "manifests" / "train"
    train.mkdir(parents=True)
    rows = [
        {"id": f"u{i}", "audio": "x.flac", "text": "ab" * (i + 1), "lang": "en", "duration": 1.0}
        for i in range(100)
    ]
    (train / "en.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    # " abab..." is 1 + 2 (i + 1) byte tokens a second; the 99th percentile of i is 98.01
    assert whisper_r_max(tmp_path, tok) == r_max_rule(1 + 2 * 99.01) == 199.5
    with pytest.raises(ValueError, match="manifests"):
        whisper_r_max(tmp_path / "none", tok)


def whisper_model(weights_dir: Path, overrides=()) -> Whisfusion:
    cfg = load_config(
        CONFIGS / "tiny.yaml",
        [
            "model.decoder.kind=whisper",
            f"model.encoder.source={weights_dir}",
            "model.encoder.output_layer=0",
            # the tiny encoder's window is 1 s
            "model.encoder.window=trim",
            "model.encoder.trim_multiple_s=0.5",
            "model.canvas.r_max=8",
            "model.canvas.max_len=37",
            f"model.tokenizer.languages=[{','.join(LANGS)}]",
            *overrides,
        ],
    )
    encoder = build_encoder(cfg.model.encoder, fallback=False)
    return Whisfusion(cfg, build_tokenizer(cfg, encoder), encoder).eval()


def test_checkpoint_rebuilds_and_decodes_with_pdd(weights_dir, tmp_path):
    model = whisper_model(weights_dir)
    with torch.no_grad():
        model.decoder.mask_embed.add_(1.0)  # a trained-looking change the checkpoint must carry
    path = save_checkpoint(model, tmp_path / "w.ckpt")
    again = Whisfusion.from_checkpoint(path)
    assert isinstance(again.tokenizer, WhisperTokenizer)
    assert torch.equal(again.decoder.mask_embed, model.decoder.mask_embed)
    audio = torch.randn(2, 16000) * 0.1
    feats, valid = again.encode(audio, torch.tensor([16000, 8000]))
    out = again.decode_features(feats, valid, [1.0, 0.5], ["en", None])
    assert len(out) == 2 and out[0].language == "en"
    assert all(isinstance(t.text, str) for t in out)


@pytest.mark.parametrize("kind", ["whisper", "paper"])
def test_kv_refresh_decodes_with_fewer_rows_on_either_decoder(weights_dir, kind):
    """decode.kv_refresh > 1: after the first step a step runs only the positions it reads and
    the ones just committed, so the decoder runs fewer rows than the exact decoding over the
    same steps, Whisper-started or the paper's."""
    model = whisper_model(weights_dir) if kind == "whisper" else tiny_model()
    first = model.decoder.blocks[0]
    feats, valid = model.encode(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]))
    rows = []
    hook = (first.attn_ln if kind == "whisper" else first.norm_self).register_forward_hook(
        lambda m, i, o: rows.append(i[0].shape[0] * i[0].shape[1])
    )
    out = {}
    try:
        for refresh in (1, 6):
            rows.clear()
            options = DecodeOptions.from_config(
                model.cfg.decode, steps=6, candidates=2, blocks=2, kv_refresh=refresh
            )
            with torch.no_grad():
                out[refresh] = model.decode_features(
                    feats, valid, [1.0, 0.75], ["en", "de"], options
                )
            out[refresh, "rows"] = list(rows)
    finally:
        hook.remove()
    exact, reused = out[1, "rows"], out[6, "rows"]
    assert len(exact) == len(reused) > 1  # the same steps
    assert reused[0] == exact[0] and sum(reused[1:]) < sum(exact[1:])
    assert all(isinstance(t.text, str) for t in out[6]) and len(out[6]) == 2
    with pytest.raises(ValueError, match="kv_refresh > 1 and decode.compile"):
        DecodeOptions.from_config(model.cfg.decode, kv_refresh=4, compile=True)
    with pytest.raises(ValueError, match="kv_refresh must be >= 1"):
        DecodeOptions.from_config(model.cfg.decode, kv_refresh=0)


def test_freeze_keeps_the_named_parameters_as_loaded(weights_dir):
    patterns = "[blocks.*.cross_attn.key.*,blocks.*.cross_attn.value.*]"
    model = whisper_model(weights_dir, [f"model.decoder.freeze={patterns}"])
    frozen = {n for n, p in model.decoder.named_parameters() if not p.requires_grad}
    names = dict(model.decoder.named_parameters())
    assert frozen == {n for n in names if ".cross_attn.key." in n or ".cross_attn.value." in n}
    assert "blocks.0.cross_attn.query.weight" not in frozen
    assert all(p.requires_grad for p in whisper_model(weights_dir).decoder.parameters())
    with pytest.raises(ValueError, match="blocks.*.cross_atn"):
        whisper_model(weights_dir, ["model.decoder.freeze=[blocks.*.cross_atn.*]"])


def test_a_frozen_token_embedding_stays_the_output_layer_through_training(weights_dir):
    model = whisper_model(weights_dir, ["model.decoder.freeze=[token_embedding.weight]"])
    decoder = model.decoder.train()
    optimizer, _ = build_optimizer(decoder, model.cfg.optim, max_steps=10)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(decoder.token_embedding.weight) not in trained and id(decoder.mask_embed) in trained
    before = {n: p.detach().clone() for n, p in decoder.named_parameters()}
    feats, valid = model.encode(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000]))
    torch.manual_seed(1)
    targets = torch.randint(0, 256, (2, 12))
    masked = torch.rand(2, 12) < 0.5
    masked[:, 0] = True  # [MASK] is read, so its embedding gets a gradient
    tokens = torch.where(masked, decoder.mask_id, targets)
    canvas_valid = torch.ones(2, 12, dtype=torch.bool)
    logits = decoder(tokens, decoder.cross_cache(feats, valid), canvas_valid, masked)
    diffusion_loss(logits, targets, masked.float()).backward()
    optimizer.step()
    after = dict(decoder.named_parameters())
    # the tied output layer is the embedding as loaded; everything else learns
    assert decoder.head.weight is after["token_embedding.weight"]
    assert torch.equal(after["token_embedding.weight"], before["token_embedding.weight"])
    for name in ("mask_embed", "blocks.0.attn.query.weight"):
        assert not torch.equal(after[name], before[name]), name


class CastCounter(TorchDispatchMode):
    """Counts the dtype casts of tensors of one shape (autocast's casts reach this mode)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.casts = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and tuple(args[0].shape) == self.shape:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def test_a_frozen_output_layer_is_cast_to_bf16_once_per_decoding(weights_dir):
    model = whisper_model(weights_dir, ["model.decoder.freeze=[token_embedding.weight]"])
    feats, valid = model.encode(torch.randn(2, 16000) * 0.1, torch.tensor([16000, 8000]))
    options = DecodeOptions.from_config(model.cfg.decode).replace(steps=4, candidates=1)
    counter = CastCounter(model.decoder.head.weight.shape)
    with decoding_precision("bfloat16", "cpu"), counter:
        model.decode_features(feats, valid, [1.0, 0.5], ["en", "de"], options)
    assert counter.casts == 1  # not once per step
    assert not model.decoder.head.weight.requires_grad  # still frozen afterwards
    with pytest.raises(RuntimeError, match="no_grad"), kept_casts(model.decoder):
        pass


def test_attention_anneal_raises_the_share_with_the_step():
    decoder = SimpleNamespace(future_share=1.0)
    module = SimpleNamespace(model=SimpleNamespace(decoder=decoder))
    anneal = AttentionAnneal(100, max_steps=500)
    for step, share in [(0, 0.0), (25, 0.25), (100, 1.0), (400, 1.0)]:
        anneal.on_train_batch_start(SimpleNamespace(global_step=step), module, None, 0)
        assert decoder.future_share == share
    short = AttentionAnneal(600, max_steps=300)  # a short run anneals over all of it
    short.on_train_batch_start(SimpleNamespace(global_step=150), module, None, 0)
    assert decoder.future_share == 0.5
    with pytest.raises(ValueError, match="positive"):
        AttentionAnneal(0, max_steps=300)


def test_annealing_is_refused_for_the_papers_decoder():
    with pytest.raises(ValueError, match="kind whisper"):
        tiny_model(["model.decoder.attention_anneal_steps=10"])
    frozen = tiny_model(["model.decoder.freeze=[head.*]"]).decoder
    assert not frozen.head.weight.requires_grad and frozen.embed.weight.requires_grad


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.encoder.output_layer=1", "output_layer"),
        ("model.canvas.max_len=38", "max_len"),
        ("model.decoder.align_hidden=16", "align_hidden"),
    ],
)
def test_settings_the_whisper_decoder_cannot_honour(weights_dir, override, message):
    with pytest.raises(ValueError, match=message):
        whisper_model(weights_dir, [override])

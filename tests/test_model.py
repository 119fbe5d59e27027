"""The composed model: overfitting, the frozen encoder under training, checkpoint round trips."""

import pytest
import torch
from model_fixtures import fit_batches

from whisfusion.checkpoint import CheckpointError
from whisfusion.config import DecoderConfig, ScheduleConfig, load_config
from whisfusion.decoder import DiffusionDecoder
from whisfusion.lightning_module import WhisfusionModule
from whisfusion.model import Whisfusion
from whisfusion.pdd import canvas_for, pdd_decode
from whisfusion.schedule import MaskSchedule, diffusion_loss
from whisfusion.tokenizer import train_tokenizer

V, E, L_CANVAS = 40, 32, 16


def test_overfit_eight_pairs_and_reproduce_greedily():
    """8 fixed (features, transcript) pairs: near-zero loss, then exact greedy reproduction."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    feats = torch.randn(8, 12, E, generator=g)
    valid = torch.ones(8, 12, dtype=torch.bool)
    lengths = torch.randint(4, 12, (8,), generator=g)
    targets = torch.full((8, L_CANVAS), 1)  # EOS = 1 pads every canvas
    for i, n in enumerate(lengths.tolist()):
        targets[i, :n] = torch.randint(2, V, (n,), generator=g)
    canvas_valid = torch.ones_like(targets, dtype=torch.bool)
    dec = DiffusionDecoder(DecoderConfig(layers=2, width=64, heads=4), V, E)
    sched = MaskSchedule(ScheduleConfig(high_mask_share=0.5))
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    rep = 4  # each pair several times per batch: more mask draws per step
    cache_in = (feats.repeat(rep, 1, 1), valid.repeat(rep, 1))
    for step in range(200):
        corr = sched.corrupt(targets.repeat(rep, 1), canvas_valid.repeat(rep, 1), V, step, g)
        loss = diffusion_loss(
            dec(corr.x_t, dec.cross_cache(*cache_in), None, corr.weights > 0),
            targets.repeat(rep, 1),
            corr.weights,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():  # loss on the fully masked canvas, where decoding starts
        logits = dec(torch.full_like(targets, V), dec.cross_cache(feats, valid))
    assert torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)) < 0.05
    canvas, cvalid = canvas_for([L_CANVAS] * 8, mask_id=V, eos_id=1)
    result = pdd_decode(
        lambda x, cache, where: dec(x, cache, None, where),
        dec.cross_cache(feats, valid),
        canvas,
        cvalid,
        mask_id=V,
        eos_id=1,
        candidates=1,
        steps=4,
        remasking="low_confidence",
        random_schedule=[1.0],
        temperature=0.0,
    )
    assert torch.equal(result.tokens[:, 0], targets)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    lines = ["the cat sat on the mat", "der Hund schläft", "le chat dort"] * 30
    return train_tokenizer(lines, ["en", "de", "fr"], vocab_size=300)


def _cfg(**over):
    base = ["model.canvas.r_max=4", "trainer.max_steps=3", "optim.warmup_steps=1"]
    return load_config("configs/tiny.yaml", base + [f"{k}={v}" for k, v in over.items()])


def _batches(tok, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lens = torch.tensor([16000, 12000])
        audio = torch.randn(2, 16000, generator=g) * 0.1
        ids = [tok.lang_id("en"), *tok.encode("the cat"), 1, 1, 1]
        tokens = torch.tensor([ids + [1] * (16 - len(ids))] * 2)
        out.append(
            {
                "audio": audio,
                "audio_lens": lens,
                "tokens": tokens,
                "canvas_valid": torch.ones_like(tokens, dtype=torch.bool),
                "ids": ["a", "b"],
                "langs": ["en", "en"],
                "texts": ["the cat"] * 2,
                "durations": lens / 16000,
            }
        )
    return out


def test_encoder_stays_frozen_and_out_of_checkpoint(tokenizer, tmp_path):
    module = WhisfusionModule(Whisfusion.from_config(_cfg(), tokenizer))
    enc_before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    dec_before = {k: v.clone() for k, v in module.model.decoder.state_dict().items()}
    trainer = fit_batches(module, _batches(tokenizer), tmp_path)
    for k, v in module.model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), k  # bit-identical
    assert any(
        not torch.equal(v, dec_before[k]) for k, v in module.model.decoder.state_dict().items()
    )
    assert not module.model.encoder.training and module.training
    opt_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not opt_params & {id(p) for p in module.model.encoder.parameters()}
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "encoder" in k]
    assert ckpt["whisfusion"]["encoder"]["sha256"] == module.model.encoder.sha256


@pytest.mark.parametrize("align_hidden, align_context", [(0, 0), (16, 0), (16, 3)])
def test_checkpoint_round_trip_gives_identical_logits(
    tokenizer, tmp_path, align_hidden, align_context
):
    cfg = _cfg(
        **{"model.decoder.align_hidden": align_hidden, "model.decoder.align_context": align_context}
    )
    module = WhisfusionModule(Whisfusion.from_config(cfg, tokenizer))
    align = module.model.prior
    head_before = {k: v.clone() for k, v in align.state_dict().items()} if align else {}
    trainer = fit_batches(module, _batches(tokenizer), tmp_path)
    if align is not None:  # training reached the alignment head through its CTC loss
        assert any(not torch.equal(align.state_dict()[k], v) for k, v in head_before.items())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    again = Whisfusion.from_checkpoint(tmp_path / "m.ckpt")
    assert again.tokenizer.to_bytes() == tokenizer.to_bytes()
    batch = _batches(tokenizer, 1, seed=5)[0]
    model = module.model.eval()
    with torch.no_grad():
        outs = []
        for m in (model, again):
            feats, valid = m.encode(batch["audio"], batch["audio_lens"])
            outs.append(m.decoder(batch["tokens"], m.cross_cache(feats, valid)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    texts = [
        [
            t.text
            for t in m.decode_features(
                *m.encode(batch["audio"], batch["audio_lens"]), [1.0, 0.75], ["en", "en"]
            )
        ]
        for m in (model, again)
    ]
    assert texts[0] == texts[1]


def test_checkpoint_errors(tokenizer, tmp_path):
    module = WhisfusionModule(Whisfusion.from_config(_cfg(), tokenizer))
    trainer = fit_batches(module, _batches(tokenizer, 1), tmp_path)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        Whisfusion.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        Whisfusion.from_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(CheckpointError, match="not available here"):
        Whisfusion.from_checkpoint(path, encoder_source=str(tmp_path / "no-such-whisper"))
    # a different encoder (other seed) has another hash than the one recorded
    ckpt = torch.load(path, weights_only=True)
    ckpt["whisfusion"]["config"]["model"]["encoder"]["seed"] = 7
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="sha256"):
        Whisfusion.from_checkpoint(tmp_path / "other.ckpt")


def _cached_module(tokenizer, cache_dir, monkeypatch):
    """A training module with a feature cache in cache_dir, the encoder's unwrapped `encode`
    and the list its calls record (rows, dtype) in."""
    module = WhisfusionModule(
        Whisfusion.from_config(_cfg(**{"data.feature_cache": str(cache_dir)}), tokenizer)
    )
    calls = []
    encode = module.model.encode

    def counted(audio, lengths, dtype):
        calls.append((len(audio), dtype))
        return encode(audio, lengths, dtype)

    monkeypatch.setattr(module.model, "encode", counted)
    return module, encode, calls


def test_augmented_rows_are_encoded_each_time_and_never_cached(tokenizer, tmp_path, monkeypatch):
    module, _, calls = _cached_module(tokenizer, tmp_path / "cache", monkeypatch)
    batch = dict(_batches(tokenizer, 1)[0], augmented=torch.tensor([True, False]))
    first, _ = module.features(batch)
    again, _ = module.features(batch)
    assert [n for n, _ in calls] == [2, 1]  # the augmented row again, the other from the cache
    torch.testing.assert_close(first, again, rtol=1e-3, atol=1e-3)  # fp16, encoded alone
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1


def test_training_encodes_in_the_decoding_precision(tokenizer, tmp_path):
    cfg = _cfg(**{"data.feature_cache": str(tmp_path / "cache"), "decode.dtype": "bfloat16"})
    module = WhisfusionModule(Whisfusion.from_config(cfg, tokenizer))
    assert module.encoder_dtype == torch.bfloat16
    batch = _batches(tokenizer, 1)[0]
    feats, valid = module.features(batch)
    half, half_valid = module.model.encode(batch["audio"], batch["audio_lens"], torch.bfloat16)
    torch.testing.assert_close(feats[valid], half[half_valid], rtol=1e-3, atol=1e-3)  # fp16
    key = module.model.encoder.feature_key(torch.bfloat16)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key[:16]]


def test_feature_cache_encodes_each_utterance_once(tokenizer, tmp_path, monkeypatch):
    module, encode, calls = _cached_module(tokenizer, tmp_path / "cache", monkeypatch)
    batch = _batches(tokenizer, 1)[0]
    first, valid = module.features(batch)
    again, valid_again = module.features(batch)
    assert calls == [(2, torch.float32)]  # the second call read the cache
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert torch.equal(valid, valid_again)
    direct, direct_valid = encode(batch["audio"], batch["audio_lens"])
    assert torch.equal(valid, direct_valid[:, : valid.shape[1]])
    torch.testing.assert_close(first[valid], direct[direct_valid], rtol=1e-3, atol=1e-3)  # fp16
    changed = dict(batch, audio=batch["audio"].flip(1))  # same ids, other audio: not stale
    module.features(changed)
    assert [n for n, _ in calls] == [2, 2]

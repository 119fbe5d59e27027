import pytest
import torch

from whisfusion.config import DecoderConfig, OptimConfig
from whisfusion.decoder import DiffusionDecoder
from whisfusion.decoders import diffusion_decoder
from whisfusion.optim import build_optimizer, lr_factor, param_groups


def test_no_weight_decay_on_norms_biases_embeddings():
    dec = DiffusionDecoder(DecoderConfig(layers=1, width=32, heads=2), 20, 16)
    extra = torch.nn.Linear(4, 4)  # has a bias
    model = torch.nn.ModuleDict({"dec": dec, "extra": extra})
    decay, no_decay = param_groups(model, 0.1)
    ids_no = {id(p) for p in no_decay["params"]}
    assert id(dec.embed.weight) in ids_no and id(extra.bias) in ids_no
    assert all(id(m.weight) in ids_no for m in dec.modules() if isinstance(m, torch.nn.RMSNorm))
    assert id(dec.head.weight) not in ids_no and decay["weight_decay"] == 0.1
    n_all = sum(1 for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_all


def test_frozen_parameters_are_left_out():
    lin = torch.nn.Linear(3, 3)
    lin.weight.requires_grad_(False)
    groups = param_groups(lin, 0.1)
    assert sum(len(g["params"]) for g in groups) == 1


def test_warmup_then_cosine():
    f = [lr_factor(s, 10, 110, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10], strict=False))
    assert all(a >= b for a, b in zip(f[10:110], f[11:111], strict=False))
    assert (
        f[60] == pytest.approx(0.55)
        and f[110] == pytest.approx(0.1)
        and f[119] == pytest.approx(0.1)
    )


def test_build_optimizer_steps_the_schedule():
    lin = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(lin, OptimConfig(lr=1.0, warmup_steps=4, betas=[0.9, 0.95]), 20)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, lr_factor(4, 4, 20, 0.1)])
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_lr_scale_gives_a_submodule_its_own_peak_lr():
    dec = diffusion_decoder(DecoderConfig(layers=1, width=32, heads=2, align_hidden=8), 20, 16)
    cfg = OptimConfig(lr=1.0, warmup_steps=2, lr_scale={"prior.head": 3.0})
    opt, sched = build_optimizer(dec, cfg, 10)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    head = dec.prior.head
    assert lr_of[id(head.proj[0].weight)] == pytest.approx(1.5)  # warmup step 0: 3.0 / 2
    assert lr_of[id(head.proj[0].bias)] == pytest.approx(1.5)
    assert lr_of[id(dec.head.weight)] == pytest.approx(0.5)
    assert lr_of[id(dec.prior.sharpness[0])] == pytest.approx(0.5)  # the rest of the prior
    assert len(lr_of) == sum(1 for _ in dec.parameters())
    opt.step()
    sched.step()
    assert sorted({round(g["lr"], 6) for g in opt.param_groups}) == [1.0, 3.0]


def test_lr_scale_naming_no_parameter_is_refused():
    dec = DiffusionDecoder(DecoderConfig(layers=1, width=32, heads=2), 20, 16)
    with pytest.raises(ValueError, match="aling.*no decoder parameter.*blocks"):
        build_optimizer(dec, OptimConfig(lr_scale={"aling": 3.0}), 10)

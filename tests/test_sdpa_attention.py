"""SDPA window attention equals MONAI's WindowAttention: forward and gradients, shifted or not, fp32 and bf16."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention, compute_mask

from kit.models import create_model
from kit.models.sdpa_attention import SDPAWindowAttention, use_monai_attention, use_sdpa_attention

WINDOW = (7, 7, 7)


def _pair(dim=24, heads=3, seed=0):
    torch.manual_seed(seed)
    monai = WindowAttention(dim, heads, WINDOW, qkv_bias=True)
    with torch.no_grad():  # a non-trivial relative position bias (MONAI's init is small)
        monai.relative_position_bias_table.normal_(0, 0.5)
    sdpa = copy.deepcopy(monai)
    assert use_sdpa_attention(sdpa) == 1 and type(sdpa) is SDPAWindowAttention
    return monai, sdpa


def _shift_mask(grid=14, shift=3):
    """MONAI's additive mask (nw, n, n) of a (grid^3) token volume with shifted 7^3 windows."""
    return compute_mask([grid, grid, grid], WINDOW, (shift,) * 3, torch.device("cpu"))


def _run(module, x, mask, amp):
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = module(x, mask)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return out.float(), x.grad.float(), grads


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("amp", [False, True])
def test_window_attention_forward_and_gradients_equal_monai(shifted, amp):
    monai, sdpa = _pair()
    mask = _shift_mask() if shifted else None
    nw = 8 if shifted else 1  # 14^3 tokens in 7^3 windows: 8 windows per sample
    x = torch.randn(2 * nw, 343, 24, generator=torch.Generator().manual_seed(1))
    if shifted:
        assert mask.shape == (nw, 343, 343) and (mask == -100).any()
    ref_out, ref_dx, ref_grads = _run(monai, x, mask, amp)
    out, dx, grads = _run(sdpa, x, mask, amp)
    # float32: the same arithmetic; bf16 autocast: both round q, k, v and scores to bf16 (8 bits of mantissa).
    tol = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(dx, ref_dx, **tol)
    assert set(grads) == set(ref_grads)
    for name in grads:
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name] / scale, ref_grads[name] / scale, **tol, msg=name)
    if amp:  # and bf16 is still close to float32 (the comparison above is not vacuous)
        fp32_out, _, _ = _run(monai, x, mask, False)
        torch.testing.assert_close(out, fp32_out, rtol=5e-2, atol=5e-2)


def test_dropout_follows_the_training_mode():
    monai, sdpa = _pair()
    sdpa.attn_drop.p = 0.5
    x = torch.randn(2, 343, 24)
    sdpa.eval()
    torch.testing.assert_close(sdpa(x, None), monai.eval()(x, None), rtol=1e-5, atol=1e-5)
    sdpa.train()
    torch.manual_seed(0)
    assert not torch.allclose(sdpa(x, None), sdpa.eval()(x, None))


def test_whole_swinunetr_equals_monai_attention_and_the_swap_is_undone():
    torch.manual_seed(0)
    net = create_model("swinunetr", in_channels=2, out_channels=3, feature_size=12)
    assert sum(type(m) is SDPAWindowAttention for m in net.modules()) == 8
    reference = copy.deepcopy(net)
    assert use_monai_attention(reference) == 8
    assert not any(type(m) is SDPAWindowAttention for m in reference.modules())
    plain = create_model("swinunetr", in_channels=2, out_channels=3, feature_size=12, sdpa_attention=False)
    assert not any(type(m) is SDPAWindowAttention for m in plain.modules())
    assert "sdpa_attention" not in plain.config and plain.state_dict().keys() == net.state_dict().keys()

    x = torch.randn(1, 2, 64, 64, 64, generator=torch.Generator().manual_seed(2))
    out = net(x)
    ref = reference(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    ref.square().mean().backward()
    for (name, p), (_, q) in zip(net.named_parameters(), reference.named_parameters()):
        scale = max(q.grad.abs().max().item(), 1e-12)
        torch.testing.assert_close(p.grad / scale, q.grad / scale, rtol=1e-3, atol=1e-3, msg=name)

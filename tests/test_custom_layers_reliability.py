"""Reliability of models/custom_layers.py beyond the happy path (tests/test_custom_layers.py).

Run from the repo root:  python3 -m pytest tests/test_custom_layers_reliability.py -q

What is checked
  * second-order use (gradient penalty, double backward) raises a clear error instead of
    silently dropping terms; the autograd reference supports it; first-order use is unaffected.
  * an empty batch (N = 0): forward and backward of every layer behave as native layers do.
  * GeMPool2d in float32: finite and accurate against a float64 evaluation of the definition for
    p up to 20 over inputs from 1e-6 to 1e4.
  * GeMPool2d's learnable p (p = p_min + softplus(p_raw)): driven towards 0 it stays >= p_min with finite
    outputs and gradients; gradcheck through the softplus; p readable; state dicts round-trip (and the former
    layout loads).
  * bad constructor arguments and bad inputs: one clear ValueError naming the layer;
  * CustomConv2d's nn.Conv2d options (groups, padding modes, 'same'/'valid', unbatched input):
    equal to nn.Conv2d (forward and gradients) and gradcheck with WS and gate on.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Dict, List

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck

from models.custom_layers import (CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, SpatialAttention,
                                  Swish, autograd_reference)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One instance of every layer (every option that changes the backward), input channels 4.
LAYERS: Dict[str, Callable[[], nn.Module]] = {
    "conv": lambda: CustomConv2d(4, 3, 3, padding=1),
    "conv_ws_gate": lambda: CustomConv2d(4, 3, 3, weight_standardization=True, channel_gate=True),
    "se": lambda: ChannelAttention(4, reduction=2),
    "ca_avgmax": lambda: ChannelAttention(4, reduction=2, pool_types=("avg", "max")),
    "spatial": lambda: SpatialAttention(3),
    "cbam": lambda: CBAM(4, reduction=2, kernel_size=3),
    "swish": lambda: Swish(beta=1.3),
    "swish_fixed": lambda: Swish(beta=0.7, learnable=False),
    "gem_global": lambda: GeMPool2d(p=2.5),
    "gem_window": lambda: GeMPool2d(kernel_size=3, stride=2, p=2.5),
    "mixed": lambda: MixedPool2d(2, alpha_init=0.3),
    "mixed_overlap": lambda: MixedPool2d(3, stride=2),
}
WITH_PARAMS = [n for n, f in LAYERS.items() if list(f().parameters())]


def _layer(name: str, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(0)
    m = LAYERS[name]().to(dtype)
    with torch.no_grad():  # away from the init values at which some terms vanish (gate == 1)
        for pname, prm in m.named_parameters():
            if pname.endswith("gate"):
                prm.uniform_(0.5, 1.5)
    return m


def _input(shape=(2, 4, 7, 6), dtype: torch.dtype = F64) -> Tensor:
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).abs() + 0.1


def _param_grads(m: nn.Module) -> List[Tensor]:
    return [p.grad.clone() for p in m.parameters()]


# --------------------------------------------------------------------------- #
# 1. Second-order use
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("wrt", ["input", "params"])
def test_create_graph_through_hand_written_backward_raises(name: str, wrt: str) -> None:
    m = _layer(name)
    x = _input().requires_grad_()
    inputs = [x] if wrt == "input" or not list(m.parameters()) else list(m.parameters())
    y = m(x)
    with pytest.raises(RuntimeError, match="first-order-only backward.*autograd_reference"):
        torch.autograd.grad(y.sum(), inputs, create_graph=True)


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_gradient_penalty_on_autograd_reference_reaches_the_parameters(name: str) -> None:
    """The case that used to be silently wrong, run where it is supported: the penalty's
    contribution to the parameters is real (so dropping it was an error, not a no-op)."""
    ref = autograd_reference(_layer(name))
    x = _input().requires_grad_()

    y = ref(x)
    loss = y.square().mean()
    loss.backward(retain_graph=True)
    first_order = _param_grads(ref)
    ref.zero_grad()

    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (loss + g.square().sum()).backward()
    with_penalty = _param_grads(ref)
    assert any(not torch.allclose(a, b) for a, b in zip(with_penalty, first_order))


@pytest.mark.parametrize("name", list(LAYERS))
def test_first_order_use_unaffected(name: str) -> None:
    """backward, autograd.grad (retain_graph, inside enable_grad) and a checkpointed layer still work."""
    m = _layer(name)
    x = _input().requires_grad_()
    with torch.enable_grad():
        y = m(x)
        (gx,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    y.sum().backward()
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)
    x.grad = None
    torch.utils.checkpoint.checkpoint(m, x, use_reentrant=False).sum().backward()
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# 2. Empty batch
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("reference", [False, True], ids=["hand_written", "autograd_reference"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_empty_batch_forward_and_backward(name: str, reference: bool, layout: str) -> None:
    """As nn.Conv2d / F.max_pool2d: an (0, ...) output of the usual shape, an empty input grad, zero param grads."""
    m = _layer(name, torch.float32)
    m = autograd_reference(m) if reference else m
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(0, 4, 7, 6).contiguous(memory_format=fmt).requires_grad_()
    with torch.no_grad():
        expected_shape = (0,) + tuple(m(torch.randn(1, 4, 7, 6)).shape[1:])
    y = m(x)
    assert tuple(y.shape) == expected_shape
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)), pname
    if list(m.parameters()):  # the parameters-only path of backward too
        m.zero_grad()
        m(x.detach()).sum().backward()
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in m.parameters())


# --------------------------------------------------------------------------- #
# 3. GeM range in float32
# --------------------------------------------------------------------------- #
def _gem_definition(x: Tensor, p: Tensor, kernel_size, stride, eps: float = 1e-6) -> Tensor:
    """The textbook formula, evaluated in float64 (x^p spans 1e-120..1e80 here: fine in float64)."""
    u = x.clamp(min=eps).pow(p)
    m = u.mean(dim=(2, 3), keepdim=True) if kernel_size is None else F.avg_pool2d(u, kernel_size, stride)
    return m.pow(1 / p)


def _wide_range_input() -> Tensor:
    """Log-uniform in [1e-6, 1e4]; sample 0 only tiny values (1e-6..1e-5), sample 1 only large ones (1e3..1e4)."""
    g = torch.Generator().manual_seed(0)
    exponent = torch.rand(4, 3, 12, 12, generator=g, dtype=F64) * 10 - 6
    exponent[0] = exponent[0] / 10 - 5.4  # [-6, -5]
    exponent[1] = exponent[1] / 10 + 3.6  # [3, 4]
    return (10 ** exponent).float()


@pytest.mark.parametrize("p", [0.5, 1.0, 3.0, 10.0, 20.0])
@pytest.mark.parametrize("kernel_size,stride", [(None, None), (3, 2), (2, None), (3, 1)])
@pytest.mark.parametrize("reference", [False, True], ids=["hand_written", "autograd_reference"])
def test_gem_float32_stable_and_accurate_over_wide_range(p: float, kernel_size, stride, reference: bool) -> None:
    """Tolerances: float32 rounds to 6e-8 relative. y = M * m^(1/p) with m = mean (x/M)^p: the power multiplies the
    relative error of x/M by p and the root divides it by p again, so y is accurate to a few ulps for every p
    (observed <= 4.3e-7; rtol 2e-6 = ~17 ulps). dL/dx is bounded by the window size and accurate to a few ulps of
    its largest entry (observed <= 2.3e-7 of max; atol 2e-6 of max). dL/dp is a sum of terms of both signs, which
    cancel (observed <= 1.3e-5; rtol 1e-4)."""
    x32 = _wide_range_input()
    m = GeMPool2d(kernel_size, stride, p=p, p_min=0.25)  # a floor below the smallest p tested
    m = autograd_reference(m) if reference else m
    x = x32.clone().requires_grad_()
    y = m(x)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(gy)
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(m.p_raw.grad)

    x64 = x32.double().requires_grad_()
    p64 = torch.tensor(p, dtype=F64, requires_grad=True)
    y64 = _gem_definition(x64, p64, kernel_size, stride or kernel_size)
    y64.backward(gy.double())
    torch.testing.assert_close(y.double(), y64, rtol=2e-6, atol=0)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0, atol=2e-6 * float(x64.grad.abs().max()))
    # p = p_min + softplus(p_raw): dL/dp_raw = dL/dp * sigmoid(p_raw)
    torch.testing.assert_close(m.p_raw.grad.double(), p64.grad * torch.sigmoid(m.p_raw.detach().double()),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("kernel_size", [None, 2])
def test_gem_all_clamped_window(kernel_size) -> None:
    """A window entirely below eps pools to eps, with finite gradients (eps^p alone underflows in float32 at p=10)."""
    m = GeMPool2d(kernel_size, p=10.0)
    x = torch.full((1, 2, 4, 4), 1e-9, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, torch.full_like(y, 1e-6))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.isfinite(m.p_raw.grad)


# --------------------------------------------------------------------------- #
# 3b. GeM's learnable p stays valid: p = p_min + softplus(p_raw)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kernel_size,stride", [(None, None), (3, 2)])
@pytest.mark.parametrize("reference", [False, True], ids=["hand_written", "autograd_reference"])
def test_gem_p_driven_towards_zero_stays_at_the_floor_and_finite(kernel_size, stride, reference: bool) -> None:
    """Minimising the output pushes p down (the power mean grows with p). With the former unconstrained p, SGD at
    lr 10 took p below 0 within one step (then to -inf); now p approaches p_min from above and stays finite."""
    m = GeMPool2d(kernel_size, stride, p=3.0)
    m = autograd_reference(m) if reference else m
    x = torch.rand(4, 3, 7, 7, generator=torch.Generator().manual_seed(0)) * 3 + 0.01
    opt = torch.optim.SGD(m.parameters(), lr=10.0)
    for _ in range(100):
        opt.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        (10 * y.sum()).backward()
        assert torch.isfinite(y).all() and torch.isfinite(xi.grad).all() and torch.isfinite(m.p_raw.grad)
        opt.step()
        assert torch.isfinite(m.p_raw) and float(m.p) >= m.p_min
    assert float(m.p) < m.p_min + 1e-3  # it was driven to the floor


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("raw", [-1e4, -200.0, -30.0])
@pytest.mark.parametrize("kernel_size", [None, 2])
def test_gem_very_negative_raw_is_p_min_with_finite_gradients(raw: float, kernel_size, dtype) -> None:
    """However negative p_raw gets, p = p_min exactly (softplus underflows to 0 at worst): the output is the
    p_min-mean (the average at p_min = 1) and every gradient is finite."""
    m = GeMPool2d(kernel_size, p=3.0).to(dtype)
    with torch.no_grad():
        m.p_raw.fill_(raw)
    assert float(m.p) >= 1.0 and float(m.p) == pytest.approx(1.0, abs=1e-12)
    x = (torch.rand(2, 3, 4, 6, dtype=dtype, generator=torch.Generator().manual_seed(2)) + 0.1).requires_grad_()
    y = m(x)
    y.backward(torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(3)))
    want = F.adaptive_avg_pool2d(x, 1) if kernel_size is None else F.avg_pool2d(x, kernel_size)
    torch.testing.assert_close(y, want)
    assert torch.isfinite(x.grad).all() and torch.isfinite(m.p_raw.grad)


@pytest.mark.parametrize("raw", [-4.0, 0.3, 25.0], ids=["near_floor", "mid", "linear_softplus_region"])
@pytest.mark.parametrize("kernel_size,stride", [(None, None), (3, 2)])
def test_gem_gradcheck_through_softplus(raw: float, kernel_size, stride) -> None:
    """float64 gradcheck w.r.t. x and p_raw (so through the chain rule of the softplus in the hand-written backward),
    including p_raw above softplus's threshold (20), where F.softplus is linear."""
    m = GeMPool2d(kernel_size, stride, p=3.0, p_min=0.5).double()
    x = (torch.rand(2, 3, 7, 6, dtype=F64, generator=torch.Generator().manual_seed(4)) + 0.2).requires_grad_()
    p_raw = torch.tensor(raw, dtype=F64, requires_grad=True)

    def f(x_: Tensor, raw_: Tensor) -> Tensor:
        return torch.func.functional_call(m, {"p_raw": raw_}, (x_,))

    assert gradcheck(f, (x, p_raw), eps=1e-6, atol=1e-8, rtol=1e-6)
    # and the same numbers as the autograd twin
    ref = autograd_reference(m)
    for layer in (m, ref):
        with torch.no_grad():
            layer.p_raw.fill_(raw)
    grads = [torch.autograd.grad(layer(x).square().sum(), [x, layer.p_raw]) for layer in (m, ref)]
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gem_p_is_the_readable_effective_exponent() -> None:
    """The layer study records float(module.p.detach()) per seed: p reads as the effective exponent (init 3, as
    before); the only parameter is p_raw, and p itself cannot be assigned by mistake."""
    m = GeMPool2d()
    assert float(m.p.detach()) == pytest.approx(3.0, abs=1e-6) and float(GeMPool2d(p=7.5).p) == pytest.approx(7.5)
    assert [n for n, _ in m.named_parameters()] == ["p_raw"] and not isinstance(m.p, nn.Parameter)
    assert not m.p.requires_grad
    with torch.no_grad():
        m.p_raw.fill_(0.0)
    assert float(m.p) == pytest.approx(1.0 + math.log(2.0))
    with pytest.raises(AttributeError):
        m.p = torch.tensor(2.0)
    fixed = GeMPool2d(p=0.5, learnable=False)  # a fixed p has no floor
    assert float(fixed.p) == 0.5 and list(fixed.parameters()) == [] and "p_fixed" in dict(fixed.named_buffers())
    assert "p_min=1" in repr(m) and "p=1.693" in repr(m)


@pytest.mark.parametrize("learnable", [True, False])
def test_gem_state_dict_round_trips(learnable: bool) -> None:
    torch.manual_seed(5)
    m = GeMPool2d(kernel_size=2, p=4.0, learnable=learnable, p_min=0.5)
    if learnable:  # train p a little so the loaded value is not the init
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        x = torch.rand(2, 3, 6, 6) + 0.1
        for _ in range(3):
            opt.zero_grad()
            m(x).sum().backward()
            opt.step()
        assert float(m.p) != pytest.approx(4.0)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = GeMPool2d(kernel_size=2, p=2.0, learnable=learnable, p_min=0.5)
    fresh.load_state_dict(torch.load(buf, weights_only=True))  # strict
    assert torch.equal(fresh.p, m.p) and list(fresh.state_dict()) == list(m.state_dict())
    x = torch.rand(2, 3, 6, 6) + 0.1
    assert torch.equal(fresh(x), m(x))


def test_gem_loads_the_former_state_dict_layout() -> None:
    """Weights saved before the reparameterisation hold the exponent itself as "p": converted on load."""
    learned = GeMPool2d()
    learned.load_state_dict({"p": torch.tensor(2.75)})
    assert float(learned.p) == pytest.approx(2.75, abs=1e-6) and float(learned.p_raw.detach()) != pytest.approx(2.75)
    fixed = GeMPool2d(learnable=False)
    fixed.load_state_dict({"p": torch.tensor(1.5)})
    assert float(fixed.p) == 1.5
    nested = nn.Sequential(nn.Identity(), GeMPool2d())
    nested.load_state_dict({"1.p": torch.tensor(3.5)})
    assert float(nested[1].p) == pytest.approx(3.5, abs=1e-6)
    with pytest.raises(RuntimeError, match="p_min"):
        GeMPool2d().load_state_dict({"p": torch.tensor(0.8)})  # below this layer's floor: a clear error


# --------------------------------------------------------------------------- #
# 4. Argument validation
# --------------------------------------------------------------------------- #
NAN, INF = float("nan"), float("inf")
BAD_ARGUMENTS = {
    "gem_p_nan": lambda: GeMPool2d(p=NAN),
    "gem_p_inf": lambda: GeMPool2d(p=INF),
    "gem_p_zero": lambda: GeMPool2d(p=0.0),
    "gem_p_negative": lambda: GeMPool2d(p=-2.0),
    "gem_p_text": lambda: GeMPool2d(p="three"),
    "gem_p_at_floor": lambda: GeMPool2d(p=1.0),
    "gem_p_below_floor": lambda: GeMPool2d(p=2.0, p_min=2.5),
    "gem_p_min_zero": lambda: GeMPool2d(p_min=0.0),
    "gem_p_min_negative": lambda: GeMPool2d(p_min=-1.0),
    "gem_p_min_nan": lambda: GeMPool2d(p_min=NAN),
    "gem_eps_zero": lambda: GeMPool2d(eps=0.0),
    "gem_eps_nan": lambda: GeMPool2d(eps=NAN),
    "gem_kernel_zero": lambda: GeMPool2d(kernel_size=0),
    "gem_kernel_pair_zero": lambda: GeMPool2d(kernel_size=(2, 0)),
    "gem_stride_zero": lambda: GeMPool2d(kernel_size=2, stride=0),
    "gem_stride_without_kernel": lambda: GeMPool2d(stride=2),
    "conv_in_zero": lambda: CustomConv2d(0, 4, 3),
    "conv_out_zero": lambda: CustomConv2d(3, 0, 3),
    "conv_in_negative": lambda: CustomConv2d(-3, 4, 3),
    "conv_kernel_zero": lambda: CustomConv2d(3, 4, 0),
    "conv_kernel_pair_zero": lambda: CustomConv2d(3, 4, (3, 0)),
    "conv_kernel_float": lambda: CustomConv2d(3, 4, 2.5),
    "conv_kernel_bool": lambda: CustomConv2d(3, 4, True),
    "conv_kernel_triple": lambda: CustomConv2d(3, 4, (3, 3, 3)),
    "conv_stride_zero": lambda: CustomConv2d(3, 4, 3, stride=0),
    "conv_dilation_zero": lambda: CustomConv2d(3, 4, 3, dilation=0),
    "conv_padding_negative": lambda: CustomConv2d(3, 4, 3, padding=-1),
    "conv_padding_string": lambda: CustomConv2d(3, 4, 3, padding="full"),
    "conv_same_strided": lambda: CustomConv2d(3, 4, 3, stride=2, padding="same"),
    "conv_groups_zero": lambda: CustomConv2d(4, 4, 3, groups=0),
    "conv_groups_in": lambda: CustomConv2d(3, 4, 3, groups=2),
    "conv_groups_out": lambda: CustomConv2d(4, 3, 3, groups=2),
    "conv_padding_mode": lambda: CustomConv2d(3, 4, 3, padding_mode="mirror"),
    "conv_eps_zero": lambda: CustomConv2d(3, 4, 3, weight_standardization=True, eps=0.0),
    "conv_eps_nan": lambda: CustomConv2d(3, 4, 3, eps=NAN),
    "se_channels_zero": lambda: ChannelAttention(0),
    "se_reduction_zero": lambda: ChannelAttention(8, reduction=0),
    "se_pool_types_empty": lambda: ChannelAttention(8, pool_types=()),
    "se_pool_types_unknown": lambda: ChannelAttention(8, pool_types=("avg", "lp")),
    "se_pool_types_repeat": lambda: ChannelAttention(8, pool_types=("max", "max")),
    "se_pool_types_not_a_sequence": lambda: ChannelAttention(8, pool_types=None),
    "spatial_kernel_zero": lambda: SpatialAttention(0),
    "spatial_kernel_negative": lambda: SpatialAttention(-1),
    "spatial_kernel_even": lambda: SpatialAttention(4),
    "spatial_kernel_float": lambda: SpatialAttention(3.0),
    "cbam_channels_zero": lambda: CBAM(0),
    "cbam_kernel_even": lambda: CBAM(8, kernel_size=4),
    "cbam_no_stage": lambda: CBAM(8, use_channel=False, use_spatial=False),
    "cbam_pool_types": lambda: CBAM(8, pool_types=("mean",)),
    "swish_beta_nan": lambda: Swish(beta=NAN),
    "swish_beta_inf": lambda: Swish(beta=-INF),
    "mixed_kernel_zero": lambda: MixedPool2d(0),
    "mixed_stride_zero": lambda: MixedPool2d(2, stride=0),
    "mixed_alpha_nan": lambda: MixedPool2d(2, alpha_init=NAN),
    "mixed_alpha_one": lambda: MixedPool2d(2, alpha_init=1.0),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_constructor_argument_raises_clear_value_error(case: str) -> None:
    layer = {"gem": "GeMPool2d", "conv": "CustomConv2d", "se": "ChannelAttention", "ca": "ChannelAttention",
             "spatial": "SpatialAttention",
             "cbam": "CBAM|ChannelAttention|SpatialAttention", "swish": "Swish", "mixed": "MixedPool2d"}
    with pytest.raises(ValueError, match=layer[case.split("_")[0]]):
        BAD_ARGUMENTS[case]()


BAD_INPUTS = {
    "conv_channels": (lambda: CustomConv2d(3, 4, 3), (2, 5, 8, 8)),
    "conv_5d": (lambda: CustomConv2d(3, 4, 3), (2, 3, 1, 8, 8)),
    "conv_2d": (lambda: CustomConv2d(3, 4, 3), (3, 8)),
    "se_channels": (lambda: ChannelAttention(8, 2), (2, 6, 4, 4)),
    "ca_avgmax_3d": (lambda: ChannelAttention(6, 2, pool_types=("avg", "max")), (6, 4, 4)),
    "spatial_3d": (lambda: SpatialAttention(3), (6, 4, 4)),
    "gem_window_too_big": (lambda: GeMPool2d(kernel_size=5), (2, 3, 4, 8)),
    "gem_3d": (lambda: GeMPool2d(), (3, 4, 4)),
    "mixed_window_too_big": (lambda: MixedPool2d(3), (2, 3, 8, 2)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_clear_value_error(case: str) -> None:
    factory, shape = BAD_INPUTS[case]
    m = factory()
    with pytest.raises(ValueError, match=r"shape|window"):
        m(torch.randn(*shape))


# --------------------------------------------------------------------------- #
# 4b. CustomConv2d supports nn.Conv2d's options
# --------------------------------------------------------------------------- #
CONV_OPTIONS = {
    "groups": dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1),
    "depthwise": dict(in_channels=4, out_channels=8, kernel_size=(3, 2), groups=4, stride=2),
    "reflect": dict(in_channels=3, out_channels=4, kernel_size=3, padding=(2, 1), padding_mode="reflect"),
    "replicate": dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="replicate", stride=2),
    "circular": dict(in_channels=3, out_channels=4, kernel_size=3, padding=(1, 2), padding_mode="circular"),
    "same_odd": dict(in_channels=3, out_channels=4, kernel_size=3, padding="same"),
    "same_even_dilated": dict(in_channels=3, out_channels=4, kernel_size=(4, 3), dilation=(1, 2), padding="same"),
    "same_reflect_groups": dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", padding_mode="reflect",
                                groups=2),
    "valid": dict(in_channels=3, out_channels=4, kernel_size=3, padding="valid"),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # nn.Conv2d's own note
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("option", list(CONV_OPTIONS))
def test_conv_options_equal_nn_conv2d(option: str, dtype: torch.dtype, unbatched: bool) -> None:
    kw = CONV_OPTIONS[option]
    torch.manual_seed(0)
    ref = nn.Conv2d(**kw).to(dtype)
    torch.manual_seed(0)
    m = CustomConv2d(**kw).to(dtype)
    assert torch.equal(m.weight, ref.weight) and torch.equal(m.bias, ref.bias)  # same init, same RNG draws
    shape = (kw["in_channels"], 9, 8) if unbatched else (2, kw["in_channels"], 9, 8)
    x = torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    outs = []
    for layer in (m, ref):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(2)))
        outs.append([y, xi.grad, layer.weight.grad, layer.bias.grad])
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-5)
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("option", list(CONV_OPTIONS))
def test_conv_options_gradcheck_with_ws_and_gate(option: str, unbatched: bool) -> None:
    torch.manual_seed(3)
    kw = CONV_OPTIONS[option]
    m = CustomConv2d(**kw, weight_standardization=True, channel_gate=True).double()
    with torch.no_grad():
        m.gate.uniform_(0.5, 1.5)
    shape = (kw["in_channels"], 7, 6) if unbatched else (2, kw["in_channels"], 7, 6)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x_: Tensor, *ps: Tensor) -> Tensor:
        return torch.func.functional_call(m, dict(zip(names, ps)), (x_,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-8, rtol=1e-6)

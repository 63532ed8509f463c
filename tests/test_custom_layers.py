"""Tests for models/custom_layers.py (hand-written backward passes).

Run from the repo root:  python3 -m pytest tests/test_custom_layers.py -q

What is checked
  * gradcheck (float64) w.r.t. the input AND every parameter, for every Function
    and every CustomConv2d option combination.
  * equality with the standard PyTorch counterpart (nn.Conv2d, F.silu, avg/max
    pooling, torchvision's SqueezeExcitation) and with the autograd reference: the same
    forward function run under autograd (``autograd_reference``).
  * batch 1, odd sizes, transposed / sliced (non-contiguous) and channels_last inputs.
  * bf16 autocast forward + backward: fp32 island, finite grads close to fp32.
  * only needed gradients computed / tensors saved.
  * a tiny model using each layer learns a synthetic 2-class problem.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck
from torch.func import functional_call

from models.custom_layers import (
    CBAM,
    ChannelAttention,
    CustomConv2d,
    GeMPool2d,
    MixedPool2d,
    SpatialAttention,
    Swish,
    autograd_reference,
)

F64 = torch.float64
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(autouse=True)
def _single_thread():
    """These ops are tiny: intra-op threading only adds overhead (8x slower on a
    busy 2-core box).  Restored afterwards so other test files are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# name -> (factory, input channels, positive-ish input?)
CASES: Dict[str, Tuple[Callable[[], nn.Module], int, bool]] = {
    "conv_plain": (lambda: CustomConv2d(3, 4, 3), 3, False),
    "conv_nobias": (lambda: CustomConv2d(3, 4, 3, bias=False, weight_standardization=True, channel_gate=True), 3, False),
    "conv_ws": (lambda: CustomConv2d(3, 4, 3, padding=1, weight_standardization=True), 3, False),
    "conv_gate": (lambda: CustomConv2d(3, 4, (3, 2), stride=2, channel_gate=True), 3, False),
    "conv_ws_gate_geom": (
        lambda: CustomConv2d(3, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                             weight_standardization=True, channel_gate=True), 3, False),
    "se": (lambda: ChannelAttention(6, reduction=2), 6, False),
    "ca_avgmax": (lambda: ChannelAttention(6, reduction=2, pool_types=("avg", "max")), 6, False),
    "ca_max": (lambda: ChannelAttention(5, reduction=2, pool_types=("max",)), 5, False),
    "spatial": (lambda: SpatialAttention(3), 4, False),
    "cbam": (lambda: CBAM(6, reduction=2, kernel_size=3), 6, False),
    "swish_learnable": (lambda: Swish(beta=1.3), 3, False),
    "swish_fixed": (lambda: Swish(beta=0.7, learnable=False), 3, False),
    "gem_global": (lambda: GeMPool2d(p=2.5), 3, True),
    "gem_window": (lambda: GeMPool2d(kernel_size=3, stride=2, p=2.5), 3, True),
    "gem_fixed_p": (lambda: GeMPool2d(kernel_size=2, p=3.0, learnable=False), 3, True),
    "mixed_overlap": (lambda: MixedPool2d(3, stride=2, alpha_init=0.3), 3, False),
    "mixed": (lambda: MixedPool2d(2), 3, False),
}


def make_module(name: str, dtype: torch.dtype = F64) -> nn.Module:
    factory, _, _ = CASES[name]
    m = factory().to(dtype)
    # Move gates/exponents/logits away from their init so the tests are not blind
    # to terms that vanish at the init value (e.g. gate == 1, a == 0).
    with torch.no_grad():
        for pname, prm in m.named_parameters():
            if pname.endswith("gate"):
                prm.uniform_(0.5, 1.5)
            if pname == "a":
                prm.add_(0.4)
    return m


def make_input(name: str, shape: Tuple[int, ...], dtype: torch.dtype = F64) -> Tensor:
    x = torch.randn(*shape, dtype=dtype)
    if CASES[name][2]:
        x = x + 0.6  # GeM: mostly positive, some entries clamped to eps
    return x


def _grads(fn: Callable[[Tensor], Tensor], x: Tensor, params: List[Tensor], gy_seed: int = 1) -> List[Tensor]:
    y = fn(x)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(gy_seed))
    inputs = ([x] if x.requires_grad else []) + params
    return [y] + list(torch.autograd.grad(y, inputs, gy))


def _assert_list_close(got: List[Tensor], want: List[Tensor], **tol: float) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"tensor #{i} (0 = output): {m}")


# --------------------------------------------------------------------------- #
# gradcheck: input and every parameter, float64
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_input_and_params(name: str) -> None:
    torch.manual_seed(0)
    m = make_module(name)
    c = CASES[name][1]
    x = make_input(name, (2, c, 6, 5)).requires_grad_()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in m.named_parameters()]

    def f(x_: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(m, dict(zip(names, ps)), (x_,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", ["conv_ws_gate_geom", "se", "ca_avgmax", "spatial", "swish_learnable", "gem_window",
                                  "mixed_overlap"])
@pytest.mark.parametrize("which", ["input_only", "params_only"])
def test_partial_requires_grad(name: str, which: str) -> None:
    """needs_input_grad paths: skipping some gradients must not change the others."""
    torch.manual_seed(0)
    m = make_module(name)
    x = make_input(name, (2, CASES[name][1], 7, 6))
    full = _grads(m, x.clone().requires_grad_(), list(m.parameters()))
    if which == "input_only":
        m.requires_grad_(False)
        got = _grads(m, x.clone().requires_grad_(), [])
        want = full[:2]
    else:
        got = _grads(m, x.clone(), list(m.parameters()))
        want = [full[0]] + full[2:]
    _assert_list_close(got, want, rtol=0, atol=0)


# --------------------------------------------------------------------------- #
# Equality with the autograd reference (same forward, autograd backward), incl. awkward layouts
# --------------------------------------------------------------------------- #
def _layout(kind: str, c: int, dtype: torch.dtype, name: str) -> Tensor:
    if kind == "contiguous":
        x = make_input(name, (2, c, 6, 8), dtype)
    elif kind == "batch1":
        x = make_input(name, (1, c, 6, 8), dtype)
    elif kind == "odd":
        x = make_input(name, (2, c, 7, 9), dtype)
    elif kind == "transposed":
        x = make_input(name, (2, c, 9, 7), dtype).transpose(2, 3)
        assert not x.is_contiguous()
    elif kind == "sliced":
        x = make_input(name, (2, c + 1, 14, 9), dtype)[:, 1:, ::2]
        assert not x.is_contiguous()
    elif kind == "channels_last":
        x = make_input(name, (2, c, 7, 9), dtype).contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    else:
        raise ValueError(kind)
    return x


@pytest.mark.parametrize("layout", ["contiguous", "batch1", "odd", "transposed", "sliced", "channels_last"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name: str, layout: str) -> None:
    torch.manual_seed(1)
    m = make_module(name)
    x = _layout(layout, CASES[name][1], F64, name).requires_grad_()
    ref = autograd_reference(m)
    got = _grads(m, x, list(m.parameters()))
    want = _grads(ref, x, list(ref.parameters()))
    _assert_list_close(got, want, **TOL[F64])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float32(name: str) -> None:
    torch.manual_seed(2)
    m = make_module(name, torch.float32)
    x = make_input(name, (2, CASES[name][1], 7, 9), torch.float32).requires_grad_()
    ref = autograd_reference(m)
    got = _grads(m, x, list(m.parameters()))
    want = _grads(ref, x, list(ref.parameters()))
    assert all(t.dtype == torch.float32 for t in got)
    _assert_list_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_autograd_reference_runs_same_forward_under_autograd(name: str) -> None:
    """Same forward op for op (bit-identical output), but autograd's backward, on an independent copy."""
    torch.manual_seed(13)
    m = make_module(name)
    ref = autograd_reference(m)
    x = make_input(name, (2, CASES[name][1], 7, 9)).requires_grad_()
    y, y_ref = m(x), ref(x)
    assert torch.equal(y, y_ref)
    assert type(y.grad_fn).__name__.endswith("FunctionBackward")        # the hand-written backward
    assert not type(y_ref.grad_fn).__name__.endswith("FunctionBackward")  # an autograd node of a standard op
    for (n, p), (n_ref, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert n == n_ref and torch.equal(p, q) and p is not q
    assert m(x).grad_fn is not None and type(m(x).grad_fn) is type(y.grad_fn)  # the original is unchanged


def test_autograd_reference_switches_nested_layers() -> None:
    model = nn.Sequential(CustomConv2d(3, 8, 3), CBAM(8, 4, 3), Swish(), GeMPool2d())
    ref = autograd_reference(model)
    switched = [getattr(m, "use_autograd", None) for m in ref.modules()]
    assert switched.count(True) == 5 and not any(getattr(m, "use_autograd", False) for m in model.modules())


# --------------------------------------------------------------------------- #
# Standard counterparts
# --------------------------------------------------------------------------- #
def test_se_equals_torchvision_squeeze_excitation() -> None:
    """An independent implementation of the same SE block (1x1 convs instead of linear layers)."""
    from torchvision.ops import SqueezeExcitation

    torch.manual_seed(14)
    m = ChannelAttention(8, reduction=4).double()
    tv = SqueezeExcitation(8, 2).double()
    with torch.no_grad():
        tv.fc1.weight.copy_(m.fc1_weight[:, :, None, None]); tv.fc1.bias.copy_(m.fc1_bias)
        tv.fc2.weight.copy_(m.fc2_weight[:, :, None, None]); tv.fc2.bias.copy_(m.fc2_bias)
    x = torch.randn(2, 8, 5, 7, dtype=F64).requires_grad_()
    got, want = _grads(m, x, []), _grads(tv, x, [])
    _assert_list_close(got, want, **TOL[F64])


def test_weight_standardization_equals_layer_norm_of_each_filter() -> None:
    torch.manual_seed(15)
    m = CustomConv2d(3, 4, 3, padding=1, weight_standardization=True, eps=1e-5).double()
    ref = nn.Conv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        ref.weight.copy_(F.layer_norm(m.weight.flatten(1), (27,), eps=1e-5).view_as(m.weight))
        ref.bias.copy_(m.bias)
    x = torch.randn(2, 3, 6, 5, dtype=F64)
    torch.testing.assert_close(m(x), ref(x), **TOL[F64])


@pytest.mark.parametrize("use", ["mean", "max"])
def test_spatial_attention_forward_by_hand(use: str) -> None:
    """A 1x1 kernel that reads only one descriptor gives x * sigmoid(mean_c x) or x * sigmoid(max_c x)."""
    m = SpatialAttention(1).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 0.0] if use == "mean" else [0.0, 1.0], dtype=F64).view(1, 2, 1, 1))
        m.bias.zero_()
    x = torch.randn(2, 4, 3, 5, dtype=F64)
    desc = x.mean(1, keepdim=True) if use == "mean" else x.amax(1, keepdim=True)
    torch.testing.assert_close(m(x), x * torch.sigmoid(desc), **TOL[F64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "kw",
    [dict(kernel_size=3), dict(kernel_size=3, bias=False),
     dict(kernel_size=(3, 2), stride=2, padding=1), dict(kernel_size=3, stride=(1, 2), padding=(2, 1), dilation=2)],
    ids=["plain", "nobias", "stride_pad", "dilation"],
)
def test_conv_options_off_equals_nn_conv2d(kw: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    ref = nn.Conv2d(3, 5, **kw).to(dtype)
    torch.manual_seed(3)
    m = CustomConv2d(3, 5, **kw).to(dtype)
    # same init scheme + same RNG consumption => identical parameters without copying
    torch.testing.assert_close(m.weight, ref.weight, rtol=0, atol=0)
    if ref.bias is not None:
        torch.testing.assert_close(m.bias, ref.bias, rtol=0, atol=0)
    x = torch.randn(2, 3, 9, 7, dtype=dtype).requires_grad_()
    got = _grads(m, x, list(m.parameters()))
    want = _grads(ref, x, list(ref.parameters()))
    _assert_list_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_swish_beta1_equals_silu(dtype: torch.dtype) -> None:
    torch.manual_seed(4)
    x = (torch.randn(2, 3, 7, 9, dtype=dtype) * 4).requires_grad_()
    m = Swish(beta=1.0).to(dtype)
    got = _grads(m, x, [])
    want = _grads(F.silu, x, [])
    _assert_list_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("kernel_size,stride", [(None, None), (3, 2), (2, None)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gem_p1_equals_avg_pool(kernel_size, stride, dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    x = (torch.rand(2, 3, 7, 9, dtype=dtype) + 0.1).requires_grad_()
    # fixed p: exactly 1 (a learnable p = p_min + softplus(p_raw) is 1 only up to the rounding of p_raw)
    m = GeMPool2d(kernel_size, stride, p=1.0, learnable=False).to(dtype)
    got = _grads(m, x, [])
    ref = (lambda t: F.adaptive_avg_pool2d(t, 1)) if kernel_size is None else (lambda t: F.avg_pool2d(t, kernel_size, stride))
    want = _grads(ref, x, [])
    assert got[0].shape == want[0].shape
    _assert_list_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("limit", ["max", "avg"])
@pytest.mark.parametrize("kernel_size,stride", [(2, None), (3, 2)])
def test_mixed_pool_limits(limit: str, kernel_size: int, stride) -> None:
    torch.manual_seed(6)
    m = MixedPool2d(kernel_size, stride).double()
    with torch.no_grad():
        m.a.fill_(60.0 if limit == "max" else -60.0)  # sigmoid == 1 / ~1e-26
    x = torch.randn(2, 3, 7, 9, dtype=F64).requires_grad_()
    s = stride or kernel_size
    ref = (lambda t: F.max_pool2d(t, kernel_size, s)) if limit == "max" else (lambda t: F.avg_pool2d(t, kernel_size, s))
    _assert_list_close(_grads(m, x, []), _grads(ref, x, []), **TOL[F64])


@pytest.mark.parametrize("use_channel,use_spatial", [(True, True), (True, False), (False, True)])
def test_cbam_equals_composition(use_channel: bool, use_spatial: bool) -> None:
    torch.manual_seed(7)
    m = CBAM(8, reduction=4, kernel_size=5, use_channel=use_channel, use_spatial=use_spatial).double()
    x = torch.randn(2, 8, 7, 9, dtype=F64).requires_grad_()

    def composed(t: Tensor) -> Tensor:
        if use_channel:
            t = m.channel(t)
        if use_spatial:
            t = m.spatial(t)
        return t

    params = list(m.parameters())
    _assert_list_close(_grads(m, x, params), _grads(composed, x, params), rtol=0, atol=0)
    ref = autograd_reference(m)
    _assert_list_close(_grads(m, x, params), _grads(ref, x, list(ref.parameters())), **TOL[F64])
    assert (m.channel is not None) == use_channel and (m.spatial is not None) == use_spatial


def _mlp(m: ChannelAttention, s: Tensor) -> Tensor:
    return F.linear(F.relu(F.linear(s, m.fc1_weight, m.fc1_bias)), m.fc2_weight, m.fc2_bias)


def test_cbam_is_cbam_as_published() -> None:
    """Woo et al. 2018, eq. 2 and 3: M_c = sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x))) (one shared MLP), then
    M_s = sigmoid(conv7x7([mean_c, max_c])), written out with plain torch ops (amax, not our forward)."""
    torch.manual_seed(16)
    m = CBAM(8, reduction=4).double()
    assert m.channel.pool_types == ("avg", "max") and m.spatial.kernel_size == 7
    x = torch.randn(2, 8, 9, 7, dtype=F64)
    x1 = x * torch.sigmoid(_mlp(m.channel, x.mean((2, 3))) + _mlp(m.channel, x.amax((2, 3))))[:, :, None, None]
    maps = torch.cat([x1.mean(1, keepdim=True), x1.amax(1, keepdim=True)], dim=1)
    want = x1 * torch.sigmoid(F.conv2d(maps, m.spatial.weight, m.spatial.bias, padding=3))
    torch.testing.assert_close(m(x), want, **TOL[F64])


@pytest.mark.parametrize("pool_types", [("avg",), ("max",), ("avg", "max")])
def test_channel_attention_forward_by_hand(pool_types) -> None:
    torch.manual_seed(17)
    m = ChannelAttention(6, reduction=3, pool_types=pool_types).double()
    x = torch.randn(3, 6, 5, 4, dtype=F64)
    pooled = {"avg": x.mean((2, 3)), "max": x.amax((2, 3))}
    z = sum(_mlp(m, pooled[k]) for k in pool_types)
    torch.testing.assert_close(m(x), x * torch.sigmoid(z)[:, :, None, None], **TOL[F64])


def test_se_is_the_default_channel_attention_and_cbam_keeps_an_se_option() -> None:
    """The layer study's SE variant is ChannelAttention(ch, r); CBAM(pool_types=("avg",)) is the former CBAM."""
    assert ChannelAttention(8, 4).pool_types == ("avg",)
    assert CBAM(8, 4, pool_types=("avg",)).channel.pool_types == ("avg",)
    assert ChannelAttention(8, 4, pool_types=["max", "avg"]).pool_types == ("avg", "max")  # canonical order
    assert ChannelAttention(8, 4, pool_types="max").pool_types == ("max",)
    # the repr is part of a run's identity (config hash): SE's is unchanged, CBAM's differs from the former CBAM's
    assert repr(ChannelAttention(8, 4)) == "ChannelAttention(8, reduction=4, hidden=2)"
    assert "pool_types=('avg', 'max')" in repr(CBAM(8, 4)) and "pool_types" not in repr(CBAM(8, 4, pool_types="avg"))


@pytest.mark.parametrize("shape", [(1, 6, 5, 3), (3, 6, 1, 7), (1, 6, 1, 1), (2, 6, 11, 9)],
                         ids=["n1_odd", "one_row", "1x1", "odd"])
@pytest.mark.parametrize("pool_types", [("avg", "max"), ("max",)])
def test_channel_attention_max_gradcheck_odd_sizes(pool_types, shape) -> None:
    """float64 gradcheck of the max path, input and all parameters; random inputs, so no ties."""
    torch.manual_seed(18)
    m = ChannelAttention(6, reduction=2, pool_types=pool_types).double()
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(x_: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(m, dict(zip(names, ps)), (x_,))

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def _tied_input(n: int, c: int, h: int, w: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Random input whose every (sample, channel) has its maximum at exactly two positions; and those positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h * w, dtype=F64, generator=g)
    pos = torch.stack([torch.randperm(h * w, generator=g)[:2] for _ in range(n * c)]).view(n, c, 2)
    x.scatter_(2, pos, (x.amax(2, keepdim=True) + 1.0).expand(n, c, 2))
    return x.view(n, c, h, w), pos


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_channel_attention_max_ties_go_to_one_position(layout: str) -> None:
    """With tied maxima the hand-written backward routes each channel's max gradient to one of the tied positions
    (as max(dim) with indices, i.e. exactly the autograd twin); amax's even split differs only there, by a transfer
    between the two tied positions (same total)."""
    torch.manual_seed(19)
    m = ChannelAttention(6, reduction=2, pool_types=("avg", "max")).double()
    x, pos = _tied_input(2, 6, 5, 7, seed=3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    got = _grads(m, x, list(m.parameters()))
    ref = autograd_reference(m)
    _assert_list_close(got, _grads(ref, x, list(ref.parameters())), **TOL[F64])

    def amax_version(t: Tensor) -> Tensor:  # the same layer with amax, whose backward splits ties evenly
        z = _mlp(m, t.mean((2, 3))) + _mlp(m, t.amax((2, 3)))
        return t * torch.sigmoid(z)[:, :, None, None]

    even = _grads(amax_version, x, [])
    torch.testing.assert_close(got[0], even[0], **TOL[F64])
    d = (got[1] - even[1]).flatten(2)
    at_ties = d.gather(2, pos)
    rest = d.scatter(2, pos, 0.0)
    torch.testing.assert_close(rest, torch.zeros_like(rest), rtol=0, atol=1e-12)  # only the tied positions differ
    torch.testing.assert_close(at_ties.sum(2), torch.zeros(2, 6, dtype=F64), rtol=0, atol=1e-12)  # same total
    assert (at_ties.abs() > 1e-9).all()  # one tied position got all of it, the other none: not an even split


def test_channel_attention_max_path_reaches_only_the_argmax() -> None:
    """Remove the direct path and the avg path (max only, G * w subtracted): each channel's gradient sits at its
    argmax."""
    torch.manual_seed(20)
    m = ChannelAttention(4, reduction=2, pool_types=("max",)).double()
    x = torch.randn(2, 4, 3, 5, dtype=F64, requires_grad=True)
    y = m(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    w = (y / x).detach()  # the attention weight, broadcast
    max_path = (gx - w).flatten(2)
    onehot = F.one_hot(x.flatten(2).argmax(2), 15).to(F64)
    torch.testing.assert_close(max_path * (1 - onehot), torch.zeros_like(max_path), rtol=0, atol=1e-12)
    assert ((max_path * onehot).abs().sum(2) > 0).all()


def test_cbam_requires_a_stage() -> None:
    with pytest.raises(ValueError):
        CBAM(8, use_channel=False, use_spatial=False)


def test_spatial_max_grad_goes_to_argmax() -> None:
    """With the mean path and direct path removed, only the argmax channel gets gradient."""
    torch.manual_seed(8)
    m = SpatialAttention(1).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.0, 1.0], dtype=F64).view(1, 2, 1, 1))  # uses only the max map
        m.bias.zero_()
    x = torch.randn(1, 4, 3, 3, dtype=F64).requires_grad_()
    y = m(x)
    # d/dx of sum_c y minus the direct path G * s leaves only the max-path term
    (gx,) = torch.autograd.grad(y.sum(), x)
    s = torch.sigmoid(x.amax(1, keepdim=True))
    max_path = gx - s
    onehot = F.one_hot(x.argmax(1), 4).permute(0, 3, 1, 2).to(F64)
    torch.testing.assert_close(max_path * (1 - onehot), torch.zeros_like(x), rtol=0, atol=1e-12)
    assert (max_path * onehot).abs().sum() > 0


def test_swish_fixed_beta_is_buffer() -> None:
    m = Swish(beta=2.0, learnable=False)
    assert list(m.parameters()) == [] and "beta" in dict(m.named_buffers())
    assert list(Swish().parameters())[0].shape == torch.Size([])


# --------------------------------------------------------------------------- #
# Memory: only what backward needs is saved
# --------------------------------------------------------------------------- #
def _saved_shapes(fn: Callable[[], Tensor]) -> List[torch.Size]:
    shapes: List[torch.Size] = []

    def pack(t: Tensor) -> Tensor:
        shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_conv_saves_input_only_when_weight_grad_needed() -> None:
    torch.manual_seed(9)
    m = CustomConv2d(3, 4, 3, weight_standardization=True, channel_gate=True)
    x = torch.randn(2, 3, 8, 8)
    # x needs no grad -> x must be saved (for dL/dW); y0 saved for dL/dg
    assert x.shape in _saved_shapes(lambda: m(x))
    m.requires_grad_(False)
    shapes = _saved_shapes(lambda: m(x.requires_grad_()))
    assert x.shape not in shapes and torch.Size([2, 4, 6, 6]) not in shapes


def test_swish_saves_only_x_and_beta() -> None:
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert _saved_shapes(lambda: Swish()(x)) == [x.shape, torch.Size([])]


# --------------------------------------------------------------------------- #
# Autocast (bf16 on CPU): fp32 island
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(CASES))
def test_autocast_bf16(name: str) -> None:
    torch.manual_seed(10)
    c = CASES[name][1]
    # A preceding nn.Conv2d emits bf16 under autocast, as in a real network.
    model = nn.Sequential(nn.Conv2d(3, c, 1), make_module(name, torch.float32))
    x = torch.randn(2, 3, 7, 9)
    if CASES[name][2]:
        with torch.no_grad():
            model[0].bias.fill_(0.6)
    params = list(model.parameters())

    want = _grads(model, x.clone().requires_grad_(), params)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(model, x.clone().requires_grad_(), params)  # backward inside the context too
    assert got[0].dtype == torch.float32  # the custom layer's output stays fp32
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.isfinite(g).all()
        rel = (g.float() - w).norm() / w.norm().clamp_min(1e-12)
        assert rel < 5e-2, rel


@pytest.mark.parametrize("name", ["conv_ws_gate_geom", "cbam", "swish_learnable", "gem_window", "mixed_overlap"])
def test_autocast_bf16_input_gets_bf16_grad(name: str) -> None:
    torch.manual_seed(11)
    m = make_module(name, torch.float32)
    x32 = make_input(name, (2, CASES[name][1], 7, 9), torch.float32)
    x = x32.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.sum().backward()  # backward outside the context
    assert y.dtype == torch.float32 and x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad).all()
    x_ref = x.detach().float().requires_grad_()
    m(x_ref).sum().backward()
    torch.testing.assert_close(x.grad.float(), x_ref.grad, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------- #
# Tiny models learn
# --------------------------------------------------------------------------- #
def _stripes(n: int = 64, size: int = 8) -> Tuple[Tensor, Tensor]:
    """Class 0: horizontal stripes, class 1: vertical stripes (random phase) + noise."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    phase = torch.randint(0, 2, (n, 1, 1), generator=g)
    idx = torch.arange(size)
    horiz = ((idx.view(1, size, 1) + phase) % 2).float().expand(n, size, size)
    vert = ((idx.view(1, 1, size) + phase) % 2).float().expand(n, size, size)
    x = torch.where(y.view(n, 1, 1).bool(), vert, horiz) + 0.3 * torch.randn(n, size, size, generator=g)
    return x.unsqueeze(1), y


def _tiny_model(kind: str) -> Tuple[nn.Module, nn.Module]:
    stem: nn.Module = nn.Conv2d(1, 8, 3, padding=1)
    act: nn.Module = nn.ReLU()
    mid: nn.Module = nn.Identity()
    pool: nn.Module = nn.AdaptiveAvgPool2d(1)
    if kind == "conv":
        stem = layer = CustomConv2d(1, 8, 3, padding=1, weight_standardization=True, channel_gate=True)
    elif kind == "swish":
        act = layer = Swish()
    elif kind == "gem":
        pool = layer = GeMPool2d(p=3.0)
    else:
        mid = layer = {"se": ChannelAttention(8, 4), "spatial": SpatialAttention(3),
                       "cbam": CBAM(8, 4, 3), "mixed": MixedPool2d(2)}[kind]
    return nn.Sequential(stem, act, mid, pool, nn.Flatten(), nn.Linear(8, 2)), layer


@pytest.mark.parametrize("kind", ["conv", "se", "spatial", "cbam", "swish", "gem", "mixed"])
def test_tiny_model_learns(kind: str) -> None:
    torch.manual_seed(12)
    x, y = _stripes()
    model, layer = _tiny_model(kind)
    before = [p.detach().clone() for p in layer.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert (model(x).argmax(1) == y).float().mean() >= 0.9
    assert any(not torch.equal(b, p) for b, p in zip(before, layer.parameters()))  # the layer itself trained

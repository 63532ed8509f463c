"""Tests for models/custom_layers.py (hand-written backward passes).

Run from the repo root:  python3 -m pytest tests/test_custom_layers.py -q

What is checked
  * gradcheck (float64) w.r.t. the input AND every parameter, for every Function
    and every CustomConv2d option combination.
  * equality with the standard PyTorch counterpart (nn.Conv2d, F.silu, avg/max
    pooling) and with reference implementations written in plain autograd ops.
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


# --------------------------------------------------------------------------- #
# Reference implementations in plain autograd ops
# --------------------------------------------------------------------------- #
def ref_conv(m: CustomConv2d, x: Tensor) -> Tensor:
    w = m.weight
    if m.weight_standardization:
        wf = w.flatten(1)
        var, mean = torch.var_mean(wf, dim=1, correction=0, keepdim=True)
        w = ((wf - mean) / torch.sqrt(var + m.eps)).view_as(w)
    y = F.conv2d(x, w, None, m.stride, m.padding, m.dilation)
    if m.gate is not None:
        y = y * m.gate.view(1, -1, 1, 1)
    if m.bias is not None:
        y = y + m.bias.view(1, -1, 1, 1)
    return y


def ref_se(m: ChannelAttention, x: Tensor) -> Tensor:
    s = x.mean(dim=(2, 3))
    z = F.linear(F.relu(F.linear(s, m.fc1_weight, m.fc1_bias)), m.fc2_weight, m.fc2_bias)
    return x * torch.sigmoid(z)[:, :, None, None]


def ref_spatial(m: SpatialAttention, x: Tensor) -> Tensor:
    desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
    return x * torch.sigmoid(F.conv2d(desc, m.weight, m.bias, padding=m.kernel_size // 2))


def ref_cbam(m: CBAM, x: Tensor) -> Tensor:
    if m.channel is not None:
        x = ref_se(m.channel, x)
    if m.spatial is not None:
        x = ref_spatial(m.spatial, x)
    return x


def ref_swish(m: Swish, x: Tensor) -> Tensor:
    return x * torch.sigmoid(m.beta * x)


def ref_gem(m: GeMPool2d, x: Tensor) -> Tensor:
    u = x.clamp(min=m.eps).pow(m.p)
    pooled = u.mean(dim=(2, 3), keepdim=True) if m.kernel_size is None else F.avg_pool2d(u, m.kernel_size, m.stride)
    return pooled.pow(1.0 / m.p)


def ref_mixed(m: MixedPool2d, x: Tensor) -> Tensor:
    alpha = torch.sigmoid(m.a)
    return alpha * F.max_pool2d(x, m.kernel_size, m.stride) + (1 - alpha) * F.avg_pool2d(x, m.kernel_size, m.stride)


REFS: Dict[type, Callable[..., Tensor]] = {
    CustomConv2d: ref_conv,
    ChannelAttention: ref_se,
    SpatialAttention: ref_spatial,
    CBAM: ref_cbam,
    Swish: ref_swish,
    GeMPool2d: ref_gem,
    MixedPool2d: ref_mixed,
}

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


def _ref(m: nn.Module, x: Tensor) -> Tensor:
    return REFS[type(m)](m, x)


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


@pytest.mark.parametrize("name", ["conv_ws_gate_geom", "se", "spatial", "swish_learnable", "gem_window", "mixed_overlap"])
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
# Equality with plain-autograd references, incl. awkward layouts
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
    params = list(m.parameters())
    got = _grads(m, x, params)
    want = _grads(lambda t: _ref(m, t), x, params)
    _assert_list_close(got, want, **TOL[F64])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float32(name: str) -> None:
    torch.manual_seed(2)
    m = make_module(name, torch.float32)
    x = make_input(name, (2, CASES[name][1], 7, 9), torch.float32).requires_grad_()
    params = list(m.parameters())
    got = _grads(m, x, params)
    want = _grads(lambda t: _ref(m, t), x, params)
    assert all(t.dtype == torch.float32 for t in got)
    _assert_list_close(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- #
# Standard counterparts
# --------------------------------------------------------------------------- #
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
    m = GeMPool2d(kernel_size, stride, p=1.0).to(dtype)
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
    _assert_list_close(_grads(m, x, params), _grads(lambda t: ref_cbam(m, t), x, params), **TOL[F64])
    assert (m.channel is not None) == use_channel and (m.spatial is not None) == use_spatial


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

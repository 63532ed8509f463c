"""Task 3's speed study, every number from a paired, interleaved benchmark
(:func:`utils.analysis.paired_timing.time_forward_backward`: the candidates in rotating turns in one
process, median of the rounds, per-round ratios for the spread), in fp32 and under the training
precision (bf16 autocast, where every custom layer is an fp32 island):

* **layers**: forward+backward of every custom layer (``models/custom_layers.py``, hand-written
  backward) against the standard PyTorch layer it replaces and against the same forward function
  run under autograd (``models.custom_layers.autograd_reference``);
* **training cost**: forward+backward of one training batch of every layer-swap net against the
  base CNN, and of each custom net's autograd twin, so a cost can be put on the layer's maths and
  precision policy (twin vs base) apart from the hand-written backward (custom vs twin).

Used by ``homework_custom_layers_experiments.py --only speed``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.custom_layers import (CBAM, ChannelAttention, CustomConv2d, GeMPool2d, MixedPool2d, Swish,
                                  autograd_reference)
from utils.studies.custom_layers import figures as block_plots
from utils.engine.files import atomic_write_text, read_json, write_json
from utils.engine.markdown import markdown_table
from utils.engine.runtime import Runtime
from utils.analysis.paired_timing import paired_ratios, time_forward_backward

log = logging.getLogger("custom_layers")
SE_REDUCTION = 8       # the layer study's SE reduction (32 channels -> hidden 4)
PRECISIONS = ("fp32", "bf16")   # bf16: torch.autocast(bfloat16) around the forward, as in training


class Autocast(nn.Module):
    """``module`` run under bf16 autocast, output cast to fp32 (as the training loop casts the logits);
    the backward runs outside the context, as ``loss.backward()`` does in training."""

    def __init__(self, module: nn.Module, device_type: str) -> None:
        super().__init__()
        self.module, self.device_type = module, device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16):
            return self.module(x).float()


def in_precision(module: nn.Module, precision: str, device_type: str) -> nn.Module:
    return Autocast(module, device_type) if precision == "bf16" else module


def paired_ratio(times: dict, name: str, reference: str) -> dict:
    """``name``'s time over ``reference``'s from the same rounds (the benchmark interleaves them):
    median of the per-round ratios, their 25-75 % range, min-max and the number of rounds ``n``
    (:func:`utils.analysis.paired_timing.paired_ratios`)."""
    return paired_ratios({name: times[name]["times_ms"], reference: times[reference]["times_ms"]}, reference)[name]


@dataclass(frozen=True)
class SpeedCase:
    layer: str
    variant: str
    custom: Callable[[], nn.Module]
    autograd: Callable[[], nn.Module] | None      # same forward, autograd backward (autograd_reference)
    standard: Callable[[], nn.Module] | None      # the standard PyTorch layer it replaces
    same_as_standard: bool = False                # custom == standard numerically (extra logic off)
    positive_input: bool = False                  # feed relu(x): GeM sees post-ReLU features


def speed_cases(c: int) -> list[SpeedCase]:
    conv = functools.partial(CustomConv2d, c, c, 3, padding=1, bias=False)
    aconv = lambda **kw: autograd_reference(conv(**kw))  # noqa: E731
    std_conv = lambda: nn.Conv2d(c, c, 3, padding=1, bias=False)  # noqa: E731
    return [
        SpeedCase("CustomConv2d", "options off", conv, None, std_conv, same_as_standard=True),
        SpeedCase("CustomConv2d", "weight standardisation", functools.partial(conv, weight_standardization=True),
                  functools.partial(aconv, weight_standardization=True), std_conv),
        SpeedCase("CustomConv2d", "WS + channel gate",
                  functools.partial(conv, weight_standardization=True, channel_gate=True),
                  functools.partial(aconv, weight_standardization=True, channel_gate=True), std_conv),
        SpeedCase("ChannelAttention (SE)", f"reduction {SE_REDUCTION}", lambda: ChannelAttention(c, SE_REDUCTION),
                  lambda: autograd_reference(ChannelAttention(c, SE_REDUCTION)), None),
        SpeedCase("CBAM", f"avg+max channel r={SE_REDUCTION} + 7x7 spatial", lambda: CBAM(c, SE_REDUCTION),
                  lambda: autograd_reference(CBAM(c, SE_REDUCTION)), None),
        SpeedCase("Swish", "beta = 1 fixed (= SiLU)", lambda: Swish(1.0, learnable=False),
                  lambda: autograd_reference(Swish(1.0, learnable=False)), nn.SiLU, same_as_standard=True),
        SpeedCase("Swish", "beta learnable", lambda: Swish(1.0, learnable=True),
                  lambda: autograd_reference(Swish(1.0)), nn.ReLU),
        SpeedCase("GeMPool2d", "global, p = 1 fixed (= avg)", lambda: GeMPool2d(p=1.0, learnable=False),
                  lambda: autograd_reference(GeMPool2d(p=1.0, learnable=False)), lambda: nn.AdaptiveAvgPool2d(1),
                  same_as_standard=True, positive_input=True),
        SpeedCase("GeMPool2d", "global, p learnable", lambda: GeMPool2d(p=3.0),
                  lambda: autograd_reference(GeMPool2d(p=3.0)), lambda: nn.AdaptiveAvgPool2d(1), positive_input=True),
        SpeedCase("MixedPool2d", "2x2, alpha learnable", lambda: MixedPool2d(2),
                  lambda: autograd_reference(MixedPool2d(2)), lambda: nn.MaxPool2d(2)),
    ]


def _layer_rows(batch: int, repeats: int, runtime: Runtime, precision: str) -> list[dict]:
    channels, size = 32, 32
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(runtime.device, memory_format=fmt)
    rows = []
    for case in speed_cases(channels):
        torch.manual_seed(0)
        mods: dict[str, nn.Module] = {"custom": case.custom()}
        if case.autograd is not None:
            mods["autograd"] = case.autograd()
            mods["autograd"].load_state_dict(mods["custom"].state_dict())  # identical parameters
        if case.standard is not None:
            mods["standard"] = case.standard()
            if case.same_as_standard:
                mods["standard"].load_state_dict(mods["custom"].state_dict(), strict=False)
        for m in mods.values():
            m.to(runtime.device, memory_format=fmt)
        xin = x.relu() + 1e-3 if case.positive_input else x
        timed = {k: in_precision(m, precision, runtime.device.type) for k, m in mods.items()}
        t = time_forward_backward(timed, xin, repeats=repeats, warmup=2)
        with torch.no_grad():
            y = timed["custom"](xin)
            ref = timed.get("autograd") or (timed["standard"] if case.same_as_standard else None)
            diff = float((y - ref(xin)).abs().max()) if ref is not None else None
        row = {"precision": precision, "layer": case.layer, "variant": case.variant,
               "same_as_standard": case.same_as_standard, "custom_ms": t["custom"]["median_ms"],
               "autograd_ms": t["autograd"]["median_ms"] if "autograd" in t else None,
               "standard_ms": t["standard"]["median_ms"] if "standard" in t else None,
               "standard_layer": type(mods["standard"]).__name__ if "standard" in mods else None,
               "max_abs_diff_vs_reference": diff, "times_ms": {k: v["times_ms"] for k, v in t.items()},
               "ratio_vs_autograd": paired_ratio(t, "custom", "autograd") if "autograd" in t else None,
               "ratio_vs_standard": paired_ratio(t, "custom", "standard") if "standard" in t else None}
        log.info("speed %s %-22s %-28s custom %.2f ms | autograd %s | standard %s", precision, case.layer,
                 case.variant, row["custom_ms"], _ms(row["autograd_ms"]), _ms(row["standard_ms"]))
        rows.append(row)
    return rows


def net_training_cost(nets: dict[str, Callable[[], nn.Module]], twins: dict[str, str], batch: int, repeats: int,
                      runtime: Runtime, precision: str, reference: str = "base") -> dict:
    """Forward+backward of one training batch (``batch`` x 3 x 32 x 32, train mode) of every net in
    ``nets`` and of the autograd twin of each net named in ``twins`` (twin name -> net name), timed
    in one interleaved benchmark under ``precision``; ratios to ``reference`` per round."""
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    mods: dict[str, nn.Module] = {}
    for name, build in nets.items():
        torch.manual_seed(0)
        mods[name] = build().to(runtime.device, memory_format=fmt).train()
    for twin, of in twins.items():
        mods[twin] = autograd_reference(mods[of]).train()
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(runtime.device,
                                                                                      memory_format=fmt)
    t = time_forward_backward({k: in_precision(m, precision, runtime.device.type) for k, m in mods.items()}, x,
                              repeats=repeats, warmup=2)
    rows = {name: {"median_ms": v["median_ms"], "min_ms": v["min_ms"], "times_ms": v["times_ms"],
                   "ratio_vs_base": paired_ratio(t, name, reference), "twin_of": twins.get(name),
                   "ratio_vs_twin": None} for name, v in t.items()}
    for twin, of in twins.items():
        rows[of]["ratio_vs_twin"] = paired_ratio(t, of, twin)
    return {"precision": precision, "batch": batch, "repeats": repeats, "reference": reference, "nets": rows}


def run_speed(batch: int, repeats: int, runtime: Runtime, out_dir: Path, plots_dir: Path, force: bool,
              nets: dict[str, Callable[[], nn.Module]] | None = None, twins: dict[str, str] | None = None,
              net_batch: int = 128) -> dict:
    """Time every :class:`SpeedCase` and (with ``nets``) every net's training batch, in each of
    :data:`PRECISIONS`; reuse ``layer_speed.json`` when the settings are unchanged."""
    nets, twins = nets or {}, twins or {}
    settings = {"batch": batch, "channels": 32, "size": 32, "repeats": repeats, "warmup": 2,
                "threads": runtime.threads, "device": str(runtime.device), "channels_last": runtime.channels_last,
                "precisions": list(PRECISIONS), "cases": [f"{c.layer} | {c.variant}" for c in speed_cases(32)],
                "nets": sorted(nets), "twins": twins, "net_batch": net_batch}
    path = out_dir / "layer_speed.json"
    old = None if force else read_json(path)
    if old is not None and old.get("settings") == settings:
        log.info("speed: measurements with the same settings found in %s, re-plotting only", path)
        result = old
    else:
        rows = [row for p in PRECISIONS for row in _layer_rows(batch, repeats, runtime, p)]
        training = {p: net_training_cost(nets, twins, net_batch, repeats, runtime, p) for p in PRECISIONS} if nets \
            else {}
        result = {"settings": settings, "runtime": runtime.describe(),
                  "what": "median forward+backward wall time per call (ms), modules timed in rotation on the "
                          "same input; ratio = median over rounds of custom / other in the same round",
                  "rows": rows, "training_cost": training}
        write_json(path, result)
    atomic_write_text(out_dir / "layer_speed.md", _speed_markdown(result) + "\n")
    block_plots.plot_layer_speed(result["rows"], plots_dir / "layer_speed.png",
                                 f"Custom layers: forward + backward time per batch ({settings['batch']}x32x32x32, "
                                 f"{settings['threads']} CPU threads), fp32 and bf16 autocast")
    if result.get("training_cost"):
        block_plots.plot_training_cost(result["training_cost"], plots_dir / "layers_training_cost.png",
                                       f"Layer-swap nets: forward + backward of one training batch of "
                                       f"{net_batch} relative to the base CNN (paired, interleaved)")
    return result


def _ratio(v: dict | None) -> str:
    return "-" if v is None else f"×{v['median']:.2f} [{v['q25']:.2f}, {v['q75']:.2f}]"


def _speed_markdown(result: dict) -> str:
    st = result["settings"]
    rows = [[r["precision"], r["layer"], r["variant"], f"{r['custom_ms']:.2f}", _ms(r["autograd_ms"]),
             _ratio(r["ratio_vs_autograd"]), r["standard_layer"] or "-", _ms(r["standard_ms"]),
             _ratio(r["ratio_vs_standard"]),
             "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.1e}"]
            for r in result["rows"]]
    table = markdown_table(["precision", "layer", "variant", "custom (ms)", "autograd, same maths (ms)",
                            "custom / autograd [25-75 %]", "standard layer", "standard (ms)",
                            "custom / standard [25-75 %]", "max abs diff"], rows)
    out = [f"Input {st['batch']}x{st['channels']}x{st['size']}x{st['size']} "
           f"({'channels_last, ' if st['channels_last'] else ''}{st['threads']} threads, {st['device']}); "
           f"median of {st['repeats']} interleaved rounds; bf16 = autocast, custom layers as fp32 islands.", "", table]
    for precision, tc in result.get("training_cost", {}).items():
        out += ["", f"Training batch ({tc['batch']} images, forward + backward), {precision}:", "",
                markdown_table(["net", "median (ms)", "× base [25-75 %]", "× its autograd twin [25-75 %]"],
                               [[n, f"{v['median_ms']:.1f}", _ratio(v["ratio_vs_base"]), _ratio(v["ratio_vs_twin"])]
                                for n, v in tc["nets"].items()])]
    return "\n".join(out)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"

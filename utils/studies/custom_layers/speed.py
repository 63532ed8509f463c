"""Task 3's speed study: forward+backward time of every custom layer (``models/custom_layers.py``,
hand-written backward) against the standard PyTorch layer it replaces and against the same forward
function run under autograd (``models.custom_layers.autograd_reference``), timed side by side on one
input. Used by ``homework_custom_layers_experiments.py --only speed``.
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
from utils.analysis.paired_timing import time_forward_backward

log = logging.getLogger("custom_layers")
SE_REDUCTION = 8       # the layer study's SE reduction (32 channels -> hidden 4)


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
        SpeedCase("CBAM", f"SE r={SE_REDUCTION} + 7x7 spatial", lambda: CBAM(c, SE_REDUCTION),
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


def run_speed(batch: int, repeats: int, runtime: Runtime, out_dir: Path, plots_dir: Path, force: bool) -> dict:
    """Time every :class:`SpeedCase`; reuse ``layer_speed.json`` when the settings are unchanged."""
    channels, size = 32, 32
    settings = {"batch": batch, "channels": channels, "size": size, "repeats": repeats,
                "warmup": 2, "threads": runtime.threads, "device": str(runtime.device),
                "channels_last": runtime.channels_last, "dtype": "float32",
                "cases": [f"{c.layer} | {c.variant}" for c in speed_cases(channels)]}
    path = out_dir / "layer_speed.json"
    old = None if force else read_json(path)
    if old is not None and old.get("settings") == settings:
        log.info("speed: measurements with the same settings found in %s, re-plotting only", path)
        result = old
    else:
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, size, size, generator=gen).to(runtime.device,
                                                                                    memory_format=fmt)
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
            t = time_forward_backward(mods, xin, repeats=repeats, warmup=2)
            with torch.no_grad():
                y = mods["custom"](xin)
                ref = mods.get("autograd") or (mods["standard"] if case.same_as_standard else None)
                diff = float((y - ref(xin)).abs().max()) if ref is not None else None
            row = {"layer": case.layer, "variant": case.variant, "same_as_standard": case.same_as_standard,
                   "custom_ms": t["custom"]["median_ms"],
                   "autograd_ms": t["autograd"]["median_ms"] if "autograd" in t else None,
                   "standard_ms": t["standard"]["median_ms"] if "standard" in t else None,
                   "standard_layer": type(mods["standard"]).__name__ if "standard" in mods else None,
                   "max_abs_diff_vs_reference": diff, "times_ms": {k: v["times_ms"] for k, v in t.items()}}
            row["ratio_vs_autograd"] = row["custom_ms"] / row["autograd_ms"] if row["autograd_ms"] else None
            row["ratio_vs_standard"] = row["custom_ms"] / row["standard_ms"] if row["standard_ms"] else None
            log.info("speed %-22s %-28s custom %.2f ms | autograd %s | standard %s", case.layer, case.variant,
                     row["custom_ms"], _ms(row["autograd_ms"]), _ms(row["standard_ms"]))
            rows.append(row)
        result = {"settings": settings, "input_shape": list(x.shape),
                  "what": "median forward+backward wall time per call (ms), modules timed in rotation on the "
                          "same input; ratio = custom / other", "rows": rows}
        write_json(path, result)
    atomic_write_text(out_dir / "layer_speed.md", _speed_markdown(result) + "\n")
    block_plots.plot_layer_speed(result["rows"], plots_dir / "layer_speed.png",
                         f"Custom layers: forward + backward time per batch "
                         f"({settings['batch']}x{channels}x{size}x{size}, {settings['threads']} CPU threads)")
    return result


def _speed_markdown(result: dict) -> str:
    st = result["settings"]

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"×{v:.2f}"

    rows = [[r["layer"], r["variant"], f"{r['custom_ms']:.2f}", _ms(r["autograd_ms"]), ratio(r["ratio_vs_autograd"]),
             r["standard_layer"] or "-", _ms(r["standard_ms"]), ratio(r["ratio_vs_standard"]),
             "-" if r["max_abs_diff_vs_reference"] is None else f"{r['max_abs_diff_vs_reference']:.1e}"]
            for r in result["rows"]]
    table = markdown_table(["layer", "variant", "custom (ms)", "autograd, same maths (ms)", "custom / autograd",
                            "standard layer", "standard (ms)", "custom / standard", "max abs diff"], rows)
    return "\n".join([f"Input {st['batch']}x{st['channels']}x{st['size']}x{st['size']} "
                      f"({'channels_last, ' if st['channels_last'] else ''}{st['dtype']}, {st['threads']} threads, "
                      f"{st['device']}); median of {st['repeats']} side-by-side rounds.", "", table])


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"

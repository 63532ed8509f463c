"""Task 3's ``analysis.md`` tables, rendered from the same dicts as ``analysis.json`` (layer swaps,
the block sweep, the block finals)."""

from __future__ import annotations

from typing import Sequence

from utils.comparison_utils import format_difference, format_mean_ci
from utils.engine.markdown import markdown_table


def _runs_note(n: dict) -> str:
    if n["all_diverged"]:
        return f"**Every run diverged ({n['diverged_runs']} of {n['runs']}).**"
    return f"{n['runs']} runs, {n['diverged_runs']} diverged."


def _diff(d: dict) -> str:
    return f"{format_difference(d)}: {d['verdict']}"


def _diff_table(rows: Sequence[dict]) -> str:
    return markdown_table(["a", "b", "test acc a − b [95 % CI]", "final val acc a − b [95 % CI]"],
                          [[r["a"], r["b"], _diff(r["test_acc"]), _diff(r["final_val_acc"])] for r in rows])


def layers_markdown(n: dict) -> str:
    rows = [[key, v["layer"], f"{v['params']:,}", f"{v['mflops']:.1f}", format_mean_ci(v["test_acc"]),
             format_mean_ci(v["final_val_acc"]), str(v["diverged"])] for key, v in n["variants"].items()]
    return "\n\n".join([_runs_note(n), markdown_table(
        ["variant", "layer swapped", "params", "MFLOPs/img", "test acc (95 % CI)", "final val acc (95 % CI)",
         "diverged"], rows), _diff_table(n["vs_base"] + n["custom_vs_native"])]) + "\n"


def sizes_markdown(sizes: dict) -> str:
    return markdown_table(["net", "block", "widths", "blocks/stage", "depth", "params", "vs basic", "MFLOPs/img",
                           "vs basic"],
                          [[b, v["block"], "-".join(map(str, v["widths"])), str(v["blocks_per_stage"]), str(v["depth"]),
                            f"{v['params']:,}", f"{100 * v['param_gap_vs_reference']:+.1f} %", f"{v['mflops']:.1f}",
                            f"{100 * v['flops_gap_vs_reference']:+.1f} %"] for b, v in sizes.items()])


def _lr(v: float | None) -> str:
    return "–" if v is None else f"{v:g}"


def sweep_markdown(n: dict) -> str:
    rise = f"{n['spike_definition']['rises_percent'][0]:g}"
    rows = [[b, f"{p['lr']:g}", f"{p['n'] - p['unstable']}/{p['n']}", str(p["diverged"]), str(p["did_not_learn"]),
             format_mean_ci(p["final_val_acc"]), format_mean_ci(p["loss_spike_steps"][rise], 1.0, ""),
             "–" if p["grad_rms"]["p50"] is None else
             f"{p['grad_rms']['p50']:.3g} [{p['grad_rms']['p10']:.3g}, {p['grad_rms']['p90']:.3g}]"]
            for b, v in n["blocks"].items() for p in v["points"]]
    lines = []
    for b, v in n["blocks"].items():
        own = v["own_lr"]
        lines.append(f"- {b}: own lr {_lr(own and own['winner'])}"
                     + (f" (grid edge {own['edge']}, cap hit)" if own and own["hit_cap"] else "")
                     + f"; first unstable lr {_lr(v['frontier']['frontier'])}, highest stable lr "
                     f"{_lr(v['highest_stable_lr'])}; upward extension stopped: {(v['upward'] or {}).get('stopped')}")
    shared = n["shared_lr"]
    lines.append(f"- shared lr (mean validation over the blocks): {_lr(shared and shared['winner'])}"
                 + (" (cap hit)" if shared and shared["hit_cap"] else ""))
    return "\n\n".join([_runs_note(n) + f" Unstable: {n['unstable_rule']}. Spike: a step's training loss > "
                        f"(1 + x) × the mean of the previous {n['spike_definition']['window_steps']} steps.",
                        markdown_table(["block", "peak lr", "stable", "diverged", "never learned",
                                        "final val acc (pilots)", f"spike steps (x={rise} %)",
                                        "grad RMS median [10 %, 90 %]"], rows),
                        "\n".join(lines + [f"- {x}" for x in n["notes"]])]) + "\n"


def finals_markdown(n: dict, sizes: dict) -> str:
    rows = [[k, f"{v['lr']:g}", format_mean_ci(v["test_acc"]), format_mean_ci(v["final_val_acc"]), str(v["diverged"])]
            for k, v in n["variants"].items()]
    across = [[r["block"], r["a"], r["b"], "same runs" if r["same_runs"] else _diff(r["test_acc"])]
              for r in n["setting_vs_setting"]]
    return "\n\n".join([_runs_note(n) + f" Final seeds {n['final_seeds']}, pilot seeds {n['pilot_seeds']} "
                        f"(disjoint: {n['finals_disjoint_from_pilots']}).", sizes_markdown(sizes),
                        markdown_table(["setting/block", "peak lr", "test acc (95 % CI)", "final val acc (95 % CI)",
                                        "diverged"], rows),
                        markdown_table(["setting", "a", "b", "test acc a − b [95 % CI]", "final val acc a − b"],
                                       [[r["setting"], r["a"], r["b"], _diff(r["test_acc"]),
                                         _diff(r["final_val_acc"])] for r in n["differences"]]),
                        markdown_table(["block", "a", "b", "test acc a − b [95 % CI]"], across)]) + "\n"

"""README.md and the task pages under ``docs/`` are rendered from ``docs/templates/*.md`` and ``results/``.

``PAGES`` lists the (template, page) pairs. Every number a page quotes is a placeholder in its
template, resolved from a results file, so pages and results cannot drift apart
(``tests/test_readme_consistency.py`` re-renders every page and diffs):

* ``{{mnist_comparison/fc:summary.final_test_acc|pct}}`` -> value at key path ``summary.final_test_acc``
  of ``results/mnist_comparison/fc.json``, formatted with ``pct``;
* ``{{table:mnist_comparison}}`` -> the standard results table of every model JSON in that folder
  (in the order of the folder's ``summary.csv``).

Keys may index lists by position (``history.test_acc.-1``) or, for a list of records, by the fields
that name an entry (``differences.<a=wide,b=basic>.test_acc``: the one entry whose ``a`` is ``wide`` and
whose ``b`` is ``basic``), and contain dots (``params.per_layer.net.1``). Formats: see ``FORMATS``.

    python -m utils.report.readme            # rewrite README.md and every page
    python -m utils.report.readme --check    # exit 1 if a page is stale (and name it)

A task page redesigned for results that its standard run has not produced yet is *staged*:
``docs/templates/staged/<page>.md``, listed in ``STAGED``, rendered by no command, and checked by the
task's end-to-end test against the run it makes (``staged_problems``: every placeholder resolves, every
figure it links is drawn, every figure drawn is linked). Where a sentence must read numbers that do
not exist yet it holds a ``<!-- READ: ... -->`` marker saying what it must say. When the standard run
lands, the staged template replaces the live one and its markers become sentences; a live page never
holds a marker (``tests/test_readme_consistency.py``). A run longer than a session lands experiment by
experiment (``utils/engine/landing.py``): each experiment's results and figures are committed when its
analysis is written, its figures linked from the staged page until that page goes live.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from utils.engine.files import atomic_write_text
from utils.engine.records import SCHEMA_VERSION, Summary, summary_markdown

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "docs" / "templates"
#: (template, rendered page): README first, then one page per task and the methods appendix.
PAGES: list[tuple[Path, Path]] = [
    (TEMPLATES / "README.md", ROOT / "README.md"),
    (TEMPLATES / "task1_cnn_vs_fc.md", ROOT / "docs" / "task1_cnn_vs_fc.md"),
    (TEMPLATES / "task2_architecture.md", ROOT / "docs" / "task2_architecture.md"),
    (TEMPLATES / "task3_custom_layers.md", ROOT / "docs" / "task3_custom_layers.md"),
    (TEMPLATES / "methods.md", ROOT / "docs" / "methods.md"),
]
TEMPLATE, README = PAGES[0]
STAGED_DIR = TEMPLATES / "staged"
#: staged template -> the plots folder (under ``plots/``) of the script whose results it reads
STAGED: dict[Path, str] = {}
READ_MARKER = "<!-- READ:"
PLACEHOLDER = re.compile(r"\{\{\s*([^}|]+?)\s*(?:\|\s*(\w+)\s*)?\}\}")

#: what a page shows for a value stored as null (not computable from that run)
NOT_AVAILABLE = "n/a"
FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.2f} %",        # a fraction as a percentage
    "pct1": lambda v: f"{100 * v:.1f} %",
    "pp": lambda v: f"{100 * v:+.2f} pp",       # a difference of fractions, in percentage points
    "pp_abs": lambda v: f"{100 * v:.2f} pp",    # a magnitude in percentage points (a standard error), unsigned
    "int": lambda v: f"{int(round(v)):,}",
    "f1": lambda v: f"{v:.1f}",
    "f2": lambda v: f"{v:.2f}",
    "f3": lambda v: f"{v:.3f}",
    "g3": lambda v: f"{v:.3g}",
    "s": lambda v: f"{v:.0f} s",
    "min": lambda v: f"{v / 60:.1f} min",
    "mega": lambda v: f"{v / 1e6:.1f}",          # FLOPs -> MFLOPs
    "x": lambda v: f"{v:.2f}x",
    "ci": lambda v: _ci(v),                      # a SeedSummary dict of fractions: "mean ± half-width %"
    "diff": lambda v: _diff(v),                  # a Difference dict (+ verdict) of fractions
    "cipp": lambda v: _ci(v, unit="pp"),         # the same for a difference of fractions (e.g. a gap)
    "ci_f3": lambda v: _ci(v, unit="", scale=1, digits=3),      # a SeedSummary of a plain number (a ratio)
    "diff_f2": lambda v: _diff(v, unit="", scale=1, digits=2),  # a Difference of plain numbers
    "diff_f3": lambda v: _diff(v, unit="", scale=1, digits=3),
    "raw": str,
}


def _finite(v: Any) -> bool:
    return v is not None and v == v and v not in (float("inf"), float("-inf"))


def _ci(s: dict, unit: str = "%", scale: float = 100, digits: int = 2) -> str:
    """A mean over seeds; its Student-t interval has df = n - 1, stated with n. ``scale`` and ``unit``:
    fractions as % (default) or pp; ``scale=1, unit=""`` for a plain number such as a ratio."""
    sign, u = ("+" if unit == "pp" else ""), (f" {unit}" if unit else "")
    if s["mean"] is None:              # no seed had the quantity (e.g. no gradient sample after step 0)
        return f"{NOT_AVAILABLE} (n={s['n']})"
    mean = f"{scale * s['mean']:{sign}.{digits}f}"
    if not _finite(s["half_width"]):   # one seed: no interval
        return f"{mean}{u} (n={s['n']})"
    return f"{mean} ± {scale * s['half_width']:.{digits}f}{u} (n={s['n']}, df={s['n'] - 1})"


def _n_of(d: dict) -> str:
    """The seeds behind a difference: the pairs when paired, else each side's count."""
    if d.get("n") is not None:
        return str(d["n"])
    n_a, n_b = d.get("n_a"), d.get("n_b")
    return str(n_a) if n_a == n_b or d.get("paired") else f"{n_a} and {n_b}"


def _diff(d: dict, unit: str = "pp", scale: float = 100, digits: int = 2) -> str:
    """A Difference with its interval, n, df and verdict; fractions in pp by default."""
    u, f = (f" {unit}" if unit else ""), f"+.{digits}f"
    if not _finite(d["ci95_low"]):
        return (f"{scale * d['mean_difference']:{f}}{u} (n={_n_of(d)}, no interval: "
                f"{d.get('verdict', 'too few seeds')})")
    df = f", df={d['df']:.3g}" if _finite(d.get("df")) else ""
    return (f"{scale * d['mean_difference']:{f}}{u} (95 % CI {scale * d['ci95_low']:{f}} to "
            f"{scale * d['ci95_high']:{f}}, n={_n_of(d)}{df}; {d.get('verdict', '')})")


class ReportError(KeyError):
    pass


#: a key given by another value of the same file: ``variants.[residual_vs_plain.-1.b].test_acc`` reads the
#: variant that the last residual-vs-plain pair names, so a page can name "the deepest net" of any profile
INDIRECT = re.compile(r"\[([^\[\]]+)\]")


#: a list entry named by its fields: ``<a=wide,b=basic>`` (see the module docstring)
SELECTOR = re.compile(r"<([^<>]*)>")


def _key_parts(key_path: str) -> list[str]:
    """``key_path`` split at its dots, a selector ``<...>`` kept whole (its values may hold dots)."""
    parts, rest = [], key_path
    while rest:
        if rest.startswith("<"):
            end = rest.find(">")
            if end < 0:
                return parts + [rest]
            parts.append(rest[:end + 1])
            rest = rest[end + 1:].lstrip(".")
        else:
            head, _, rest = rest.partition(".")
            if head:
                parts.append(head)
    return parts


def _select(entries: list, selector: str, key_path: str, where: str) -> Any:
    """The one entry of ``entries`` whose fields equal the selector's ``field=value`` pairs."""
    criteria = {}
    for pair in SELECTOR.fullmatch(selector).group(1).split(","):
        field_name, eq, wanted = pair.partition("=")
        if not eq or not field_name.strip():
            raise ReportError(f"{where}: selector {selector!r} needs field=value pairs")
        criteria[field_name.strip()] = wanted.strip()
    hits = [e for e in entries if isinstance(e, dict)
            and all(k in e and str(e[k]) == v for k, v in criteria.items())]
    if len(hits) != 1:
        raise ReportError(f"{where}: {selector!r} in key path {key_path!r} matches {len(hits)} entries, not one")
    return hits[0]


def _walk(value: Any, key_path: str, where: str) -> Any:
    parts = _key_parts(key_path)
    while parts:
        if isinstance(value, list):
            if SELECTOR.fullmatch(parts[0]):
                value, parts = _select(value, parts[0], key_path, where), parts[1:]
                continue
            try:
                value, parts = value[int(parts[0])], parts[1:]
                continue
            except (IndexError, ValueError):
                raise ReportError(f"{where} has no key path {key_path!r}") from None
        # keys may contain dots themselves (module names such as "net.1"): longest match first
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if isinstance(value, dict) and key in value:
                value, parts = value[key], parts[n:]
                break
        else:
            raise ReportError(f"{where} has no key path {key_path!r}")
    return value


def lookup(results_dir: Path, ref: str) -> Any:
    """The value ``ref`` = ``<file under results, no .json>:<dotted key path>`` points at; a segment
    ``[<dotted key path>]`` is replaced by the value at that path of the same file (:data:`INDIRECT`)."""
    file_part, _, key_path = ref.partition(":")
    path = results_dir / f"{file_part}.json"
    try:
        root: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist (placeholder {ref!r})") from None
    where = f"{path} (placeholder {ref!r})"
    key_path = INDIRECT.sub(lambda m: str(_walk(root, m.group(1), where)), key_path)
    return _walk(root, key_path, where)


def results_table(results_dir: Path, experiment: str) -> str:
    folder = results_dir / experiment
    with open(folder / "summary.csv", newline="") as fh:
        names = [row["model"] for row in csv.DictReader(fh)]
    raws = [json.loads((folder / f"{n}.json").read_text()) for n in names]
    if any(r.get("schema_version") != SCHEMA_VERSION for r in raws):
        # results written before the current record format (not re-run yet): their own table
        return (folder / "summary.md").read_text().split("\n\n", 1)[1].strip()
    return summary_markdown([Summary(**r["summary"]) for r in raws])


def render(template: str, results_dir: Path) -> str:
    def substitute(m: re.Match) -> str:
        ref, fmt = m.group(1), m.group(2) or "raw"
        if ref.startswith("table:"):
            return results_table(results_dir, ref[len("table:"):])
        if fmt not in FORMATS:
            raise ReportError(f"unknown format {fmt!r} in {m.group(0)}")
        value = lookup(results_dir, ref)
        # a quantity the analysis could not compute (e.g. a fitted gain over too few points) is stored
        # as null: the page says so instead of failing on it
        return NOT_AVAILABLE if value is None else FORMATS[fmt](value)

    return PLACEHOLDER.sub(substitute, template)


#: results no script run writes: design probes (``benchmarks/*_probe.py``), committed once under
#: ``results/probes/``; a page's check against a fresh run reads them from the committed results
PROBES = "probes/"


def unresolved(template: str, results_dir: Path) -> list[str]:
    """Every placeholder of ``template`` that ``results_dir`` cannot resolve, each with why
    (placeholders of :data:`PROBES` against the committed results)."""
    problems = []
    for m in PLACEHOLDER.finditer(template):
        where = ROOT / "results" if m.group(1).startswith(PROBES) else results_dir
        try:
            render(m.group(0), where)
        except (KeyError, OSError, TypeError, ValueError) as exc:   # ReportError is a KeyError
            problems.append(f"{m.group(0)}: {exc.args[0] if exc.args else type(exc).__name__}")
    return problems


def figure_links(template: str, folder: str) -> set[str]:
    """The file names of the figures under ``plots/<folder>/`` that ``template`` shows."""
    return set(re.findall(rf"!\[[^\]]*\]\(\.\./plots/{re.escape(folder)}/([^)\s/]+\.png)\)", template))


def staged_problems(template: Path, results_dir: Path, plots_dir: Path, folder: str | None = None) -> list[str]:
    """What keeps a page from reading a run whose results are in ``results_dir`` and whose figures are
    in ``plots_dir``: unresolved placeholders, figures linked but not drawn, figures drawn but not
    linked. ``folder``: the page's plots folder under ``plots/`` (default: a staged page's, from
    :data:`STAGED`; a live page's end-to-end test names its own)."""
    text = template.read_text()
    linked, drawn = figure_links(text, folder or STAGED[template]), {p.name for p in plots_dir.glob("*.png")}
    return ([*unresolved(text, results_dir)]
            + [f"links {name}, which the run did not draw" for name in sorted(linked - drawn)]
            + [f"does not link {name}, which the run drew" for name in sorted(drawn - linked)])


def render_all(results_dir: Path | None = None) -> dict[Path, str]:
    """Every page of :data:`PAGES` rendered: ``{page path: text}``."""
    results_dir = ROOT / "results" if results_dir is None else results_dir
    return {page: render(template.read_text(), results_dir) for template, page in PAGES}


def stale_pages(rendered: dict[Path, str]) -> list[Path]:
    """The pages whose file differs from (or lacks) their rendering."""
    return [page for page, text in rendered.items() if not page.exists() or page.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render README.md and docs/*.md from docs/templates/ and results/")
    p.add_argument("--check", action="store_true", help="only check that every page is up to date")
    args = p.parse_args(argv)
    try:
        rendered = render_all()
    except ReportError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_pages(rendered)
        for page in stale:
            print(f"{page.relative_to(ROOT)} is stale: run `python -m utils.report.readme`", file=sys.stderr)
        return 1 if stale else 0
    for page, text in rendered.items():
        atomic_write_text(page, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

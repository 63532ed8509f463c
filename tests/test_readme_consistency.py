"""README.md and every page under docs/ must be exactly what its template in docs/templates/ renders
to from the committed results/ (so every number a page quotes equals the one in the results files),
every relative link in them must point at an existing file (and heading), and every figure under
plots/ must be linked from one of them."""

import json
import re
from pathlib import Path

import pytest

from utils.report import readme as report

ROOT = report.ROOT
PAGES = [page for _, page in report.PAGES]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages_text() -> dict[Path, str]:
    return {p: p.read_text() for p in PAGES}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_every_page_is_listed_and_has_its_template():
    assert PAGES[0] == ROOT / "README.md"
    for template, page in report.PAGES:
        assert template.exists(), template
        assert page.suffix == ".md"
    assert set((ROOT / "docs").glob("*.md")) == set(PAGES[1:]), "a docs/*.md page without a template (or v.v.)"


@pytest.mark.parametrize("template,page", report.PAGES, ids=lambda p: p.name)
def test_page_matches_results(template, page):
    rendered = report.render(template.read_text(), ROOT / "results")
    assert page.read_text() == rendered, f"{page.relative_to(ROOT)} is stale: run `python -m utils.report.readme`"


def test_check_names_stale_pages(tmp_path, monkeypatch, capsys):
    t, p = tmp_path / "t.md", tmp_path / "p.md"
    t.write_text("plain text\n")
    p.write_text("something else\n")
    monkeypatch.setattr(report, "PAGES", [(t, p)])
    monkeypatch.setattr(report, "ROOT", tmp_path)
    assert report.main(["--check"]) == 1
    assert "p.md is stale" in capsys.readouterr().err
    assert report.main([]) == 0 and p.read_text() == "plain text\n"
    assert report.main(["--check"]) == 0


def test_relative_links_point_at_existing_files_and_headings():
    texts = _pages_text()
    broken = []
    for page, text in texts.items():
        for target in _relative_links(text):
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve()
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_figure_is_linked():
    linked = set()
    for page, text in _pages_text().items():
        for target in _relative_links(text):
            linked.add((page.parent / target.partition("#")[0]).resolve())
    plots = ROOT / "plots"
    # a task whose standard run lands experiment by experiment: its figures are linked from the page
    # staged for it, which replaces the live one when the run is whole (utils/report/readme.py)
    for template, folder in report.STAGED.items():
        linked |= {(plots / folder / name).resolve() for name in report.figure_links(template.read_text(), folder)}
    figures = {p.resolve() for p in plots.rglob("*.png") if "quick" not in p.relative_to(plots).parts}
    missing = sorted(str(p.relative_to(ROOT)) for p in figures - linked)
    assert not missing, "figures not linked from README, docs/*.md or a staged page: " + ", ".join(missing)


def test_no_project_history_wording():
    words = re.compile(r"\b(previous round|this round|last round|no longer|v2|v3|used to|since then|"
                       r"a first run|turned out)\b", re.I)
    hits = [f"{p.relative_to(ROOT)}: {m.group(0)!r}" for p, t in _pages_text().items() for m in words.finditer(t)]
    assert not hits, hits


def test_placeholders_resolve_and_format(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "m.json").write_text(json.dumps({"summary": {"acc": 0.98765, "n": 12345},
                                                           "h": {"xs": [1.0, 2.5]}, "layers": {"net.1": 7}}))
    text = "A {{exp/m:summary.acc|pct}} B {{exp/m:summary.n|int}} C {{exp/m:h.xs.-1|f1}}"
    assert report.render(text, tmp_path) == "A 98.77 % B 12,345 C 2.5"
    assert report.render("{{exp/m:layers.net.1|int}}", tmp_path) == "7"
    with pytest.raises(report.ReportError):
        report.render("{{exp/m:summary.missing|pct}}", tmp_path)
    with pytest.raises(report.ReportError):
        report.render("{{exp/nofile:x}}", tmp_path)


def test_a_key_can_be_read_from_the_same_file(tmp_path):
    """``[path]`` names a key by another value of the file, so a page can read "the deepest net" of
    whichever depths a profile ran; a missing inner path fails like any other."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "a.json").write_text(json.dumps({
        "pairs": [{"b": "plain/8"}, {"b": "plain/44"}],
        "variants": {"plain/8": {"acc": 0.9}, "plain/44": {"acc": 0.5}}}))
    assert report.render("{{exp/a:variants.[pairs.-1.b].acc|pct}}", tmp_path) == "50.00 %"
    assert report.render("{{exp/a:variants.[pairs.0.b].acc|pct}}", tmp_path) == "90.00 %"
    with pytest.raises(report.ReportError, match="pairs.5.b"):
        report.render("{{exp/a:variants.[pairs.5.b].acc|pct}}", tmp_path)


def test_a_list_entry_is_named_by_its_fields(tmp_path):
    """``<field=value,...>`` picks the one entry of a list of records with those fields, so a page
    names a comparison by what it compares, not by where the analysis happened to put it."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "a.json").write_text(json.dumps({"differences": [
        {"setting": "own", "a": "wide", "b": "basic", "d": 0.01},
        {"setting": "shared", "a": "wide", "b": "basic", "d": 0.02},
        {"setting": "own", "a": "kernel_size/1x1+3x3", "b": "v.1", "d": 0.03}]}))
    assert report.render("{{exp/a:differences.<setting=shared,a=wide,b=basic>.d|pp}}", tmp_path) == "+2.00 pp"
    assert report.render("{{exp/a:differences.<a=kernel_size/1x1+3x3,b=v.1>.d|pp}}", tmp_path) == "+3.00 pp"
    with pytest.raises(report.ReportError, match="matches 2 entries"):
        report.render("{{exp/a:differences.<a=wide,b=basic>.d}}", tmp_path)
    with pytest.raises(report.ReportError, match="matches 0 entries"):
        report.render("{{exp/a:differences.<a=deep,b=basic>.d}}", tmp_path)
    with pytest.raises(report.ReportError, match="field=value"):
        report.render("{{exp/a:differences.<wide>.d}}", tmp_path)


def test_probe_placeholders_read_the_committed_results(tmp_path, monkeypatch):
    """A design probe is committed once, not written by a script's run: a page's check against a fresh
    run reads ``probes/`` placeholders from the committed results, and still fails on a missing key."""
    (tmp_path / "root" / "results" / "probes").mkdir(parents=True)
    (tmp_path / "root" / "results" / "probes" / "x.json").write_text(json.dumps({"gain": 0.5}))
    monkeypatch.setattr(report, "ROOT", tmp_path / "root")
    (tmp_path / "run").mkdir()
    assert report.unresolved("{{probes/x:gain|pct}}", tmp_path / "run") == []
    assert len(report.unresolved("{{probes/x:gone|pct}} {{exp/a:b}}", tmp_path / "run")) == 2


def test_standard_errors_render_unsigned():
    assert report.FORMATS["pp"](0.0076) == "+0.76 pp"
    assert report.FORMATS["pp_abs"](0.0076) == "0.76 pp"


def test_interval_formats():
    ci = {"n": 2, "mean": 0.8512, "half_width": 0.0123}
    assert report.FORMATS["ci"](ci) == "85.12 ± 1.23 % (n=2, df=1)"
    assert report.FORMATS["ci"]({**ci, "n": 1, "half_width": float("nan")}) == "85.12 % (n=1)"
    d = {"mean_difference": 0.1, "ci95_low": 0.05, "ci95_high": 0.15, "verdict": "real",
         "n_a": 3, "n_b": 3, "paired": True, "df": 2.0}
    assert report.FORMATS["diff"](d) == "+10.00 pp (95 % CI +5.00 to +15.00, n=3, df=2; real)"
    welch = {**d, "n_a": 3, "n_b": 2, "paired": False, "df": 2.4567}
    assert report.FORMATS["diff"](welch) == "+10.00 pp (95 % CI +5.00 to +15.00, n=3 and 2, df=2.46; real)"
    one_seed = {**d, "ci95_low": float("nan"), "verdict": "not enough seeds to tell"}
    assert "no interval" in report.FORMATS["diff"](one_seed)
    # plain numbers (ratios, pixels) keep their scale and carry no unit
    assert report.FORMATS["ci_f3"]({"n": 5, "mean": 0.8487, "half_width": 0.0046}) == "0.849 ± 0.005 (n=5, df=4)"
    ratio = {**d, "mean_difference": -0.025, "ci95_low": -0.03, "ci95_high": -0.02, "df": 4.0, "n": 5}
    assert report.FORMATS["diff_f3"](ratio) == "-0.025 (95 % CI -0.030 to -0.020, n=5, df=4; real)"


def test_null_values_render_as_not_available(tmp_path):
    """A value the analysis stored as null (too few points to fit) reads "n/a" in every format."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "analysis.json").write_text(json.dumps({"gain": None, "acc": 0.5}))
    text = "{{exp/analysis:gain|pp}} and {{exp/analysis:gain}} beside {{exp/analysis:acc|pct}}"
    assert report.render(text, tmp_path) == "n/a and n/a beside 50.00 %"
    empty = {"n": 0, "mean": None, "half_width": None}
    assert report.FORMATS["ci_f3"](empty) == report.FORMATS["ci"](empty) == "n/a (n=0)"


def test_live_pages_hold_no_reading_markers():
    """A ``<!-- READ: -->`` marker stands for a sentence still to be written: staged templates only."""
    for template, page in report.PAGES:
        assert report.READ_MARKER not in template.read_text(), f"{template.name} is live but holds a READ marker"


def test_staged_problems_name_each_gap(tmp_path, monkeypatch):
    (tmp_path / "results" / "exp").mkdir(parents=True)
    (tmp_path / "results" / "exp" / "analysis.json").write_text(json.dumps({"acc": 0.5}))
    plots = tmp_path / "plots"
    plots.mkdir()
    for name in ("drawn_and_linked.png", "drawn_only.png"):
        (plots / name).write_bytes(b"png")
    staged = tmp_path / "page.md"
    staged.write_text("{{exp/analysis:acc|pct}} {{exp/analysis:gone|pct}} {{other/analysis:x}}\n"
                      "![a](../plots/task/drawn_and_linked.png) ![b](../plots/task/linked_only.png)\n"
                      "![c](../plots/elsewhere/drawn_only.png)\n")
    monkeypatch.setitem(report.STAGED, staged, "task")
    problems = report.staged_problems(staged, tmp_path / "results", plots)
    assert len(problems) == 4
    assert "'exp/analysis:gone'" in problems[0] and "other/analysis.json does not exist" in problems[1]
    assert problems[2:] == ["links linked_only.png, which the run did not draw",
                            "does not link drawn_only.png, which the run drew"]   # another folder's link is not it
    staged.write_text("{{exp/analysis:acc|pct}} ![a](../plots/task/drawn_and_linked.png) "
                      "![b](../plots/task/drawn_only.png)")
    assert report.staged_problems(staged, tmp_path / "results", plots) == []

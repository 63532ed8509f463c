"""README.md must be exactly what docs/README.template.md renders to from the committed results/:
so every number README quotes equals the one in the results files."""

import json

import pytest

from utils.report import readme as report


def test_readme_matches_results():
    rendered = report.render(report.TEMPLATE.read_text(), report.ROOT / "results")
    assert report.README.read_text() == rendered, "README.md is stale: run `python -m utils.report.readme`"


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


def test_interval_formats():
    ci = {"n": 2, "mean": 0.8512, "half_width": 0.0123}
    assert report.FORMATS["ci"](ci) == "85.12 ± 1.23 % (n=2)"
    assert report.FORMATS["ci"]({**ci, "n": 1, "half_width": float("nan")}) == "85.12 % (n=1)"
    d = {"mean_difference": 0.1, "ci95_low": 0.05, "ci95_high": 0.15, "verdict": "real"}
    assert report.FORMATS["diff"](d) == "+10.00 pp (95 % CI +5.00 to +15.00; real)"
    assert "no interval" in report.FORMATS["diff"]({**d, "ci95_low": float("nan"), "verdict": "not enough seeds to tell"})

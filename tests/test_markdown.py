"""Tests for utils/engine/markdown.py."""

from __future__ import annotations

import pytest

from utils.engine.markdown import markdown_table


def test_markdown_table_layout():
    assert markdown_table(["a", "b"], [["1", 2], ["x", ""]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n| x |  |"
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_markdown_table_errors():
    with pytest.raises(ValueError, match="row 0"):
        markdown_table(["a", "b"], [["1"]])
    with pytest.raises(ValueError):
        markdown_table([], [])

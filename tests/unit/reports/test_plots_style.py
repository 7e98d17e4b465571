"""reports.plots.style: venue presets, rc settings, the palette and the skip convention."""

from __future__ import annotations

import pytest

from reports.plots.style import PALETTE, Style, get_style, palette, skippable


def test_style_presets_and_rc():
    assert get_style("icml").single == 3.25 and get_style("icml").double == 6.75
    assert get_style("neurips").double == 5.5 and get_style("iclr").double == 5.5
    rc = get_style("default").rc()
    assert rc["pdf.fonttype"] == 42 and rc["ps.fonttype"] == 42 and rc["text.usetex"] is False
    assert 7 <= rc["xtick.labelsize"] <= 9 and 8 <= rc["axes.labelsize"] <= 9
    with pytest.raises(ValueError, match="unknown style 'acl'"):
        get_style("acl")
    custom = Style("x", single=1.0, double=2.0)
    assert get_style(custom) is custom


def test_palette_cycles():
    assert palette(0) == PALETTE[0] and palette(len(PALETTE) + 1) == PALETTE[1]


def test_skippable_returns_none_and_explains():
    @skippable
    def fig(ok: bool):
        return object() if ok else "no data"

    assert fig(False) is None and fig.explain(False) == "no data"
    assert fig(True) is not None

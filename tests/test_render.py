"""The generic report renderer: blocks -> Markdown / HTML, figure sizes, and its independence from cmml."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest

from cmml.report import render

BLOCKS: list[render.Block] = [
    ("h1", "Results <&>"),
    ("toc",),
    ("h2", "Setting `both70`"),
    ("p", "See [the data](../x.csv) and `R[i][j] < 1`."),
    ("ul", ["one", "[two](a b.png)"]),
    ("table", ["Method", "AP"], [["rebq", "1.00 ± 0.10"]]),
    ("h2", "Setting `both70`"),
    ("img", "AP, `mean_j`", "ap.png"),
    ("gallery", "Heatmaps", [("m1", "h/1.png"), ("m2", "h/2.png")]),
]


def test_heading_anchors_follow_github() -> None:
    assert render.slugs(BLOCKS) == ["results-", None, "setting-both70", None, None, None, "setting-both70-1", None, None]


def test_markdown() -> None:
    md = render.to_markdown(BLOCKS)
    assert md.startswith("# Results <&>\n\n- [Setting `both70`](#setting-both70)\n- [Setting `both70`](#setting-both70-1)\n\n## ")
    assert "See [the data](../x.csv) and `R[i][j] < 1`." in md
    assert "| Method | AP |\n| --- | --- |\n| rebq | 1.00 ± 0.10 |" in md
    assert "![AP, `mean_j`](ap.png)\n\n*AP, `mean_j`*" in md
    assert "![m1](h/1.png) ![m2](h/2.png)\n\n*Heatmaps*" in md


def test_html_is_escaped_self_contained_and_linked() -> None:
    page = render.to_html(BLOCKS)
    assert "<title>Results &lt;&amp;&gt;</title>" in page and "max-width:100%;height:auto" in page
    assert '<h2 id="setting-both70">Setting <code>both70</code></h2>' in page and 'id="setting-both70-1"' in page
    assert '<a href="#setting-both70-1">' in page
    assert '<p>See <a href="../x.csv">the data</a> and <code>R[i][j] &lt; 1</code>.</p>' in page
    assert "<li>[two](a b.png)</li>" in page  # not a link: hrefs have no spaces
    assert '<div class="table-wrap"><table>' in page
    assert '<figure><img src="ap.png" alt="AP, `mean_j`"><figcaption>AP, <code>mean_j</code></figcaption></figure>' in page
    assert '<div class="gallery"><img src="h/1.png" alt="m1"><img src="h/2.png" alt="m2"></div>' in page
    assert "http" not in page.replace('name="viewport"', "")


def test_unknown_block_kind() -> None:
    for to in (render.to_markdown, render.to_html):
        with pytest.raises(ValueError, match="'video'"):
            to([("h1", "t"), ("video", "x")])


def test_figure_has_exact_pixel_size(tmp_path: Path) -> None:
    with render.figure(tmp_path / "f.png", 300, 200) as fig:
        fig.add_subplot().plot([0, 1], [0, 1], color=render.palette(12)[11])
    data = (tmp_path / "f.png").read_bytes()
    assert struct.unpack(">II", data[16:24]) == (300, 200)
    assert len(set(render.palette(20))) == 20


def test_render_imports_nothing_else_from_cmml() -> None:
    tree = ast.parse(Path(render.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in names if m.split(".")[0] == "cmml"} <= {"cmml.errors", "cmml.pipeline.atomic"}

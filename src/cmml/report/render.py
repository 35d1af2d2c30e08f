"""Generic report rendering: a list of blocks -> Markdown, and -> one self-contained HTML page; figure helpers.

Independent of what is reported (imports nothing else from cmml), so that every experiment family can
build its section on it. A block is a tuple ``(kind, *content)``:

* ``("h1" | "h2" | "h3", text)``: a heading (HTML ids follow GitHub's Markdown anchors);
* ``("p", text)``, ``("ul", [text, ...])``;
* ``("toc",)``: links to every ``h2`` of the document;
* ``("table", header, rows)``: cells are text;
* ``("img", caption, src)``: one figure with its caption;
* ``("gallery", caption, [(alt, src), ...])``: small figures side by side, wrapping, one caption.

Text may hold ```code``` spans and ``[label](href)`` links, in Markdown syntax.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Block = tuple[Any, ...]

CONTENT_WIDTH_PX = 1040  # width of the HTML page's content column; full-width figures are drawn this wide
DPI = 100  # figures are drawn at their displayed size: 9 pt = 12.5 px
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "figure.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}
CSS = f"""*,*::before,*::after{{box-sizing:border-box}}
body{{margin:0;padding:1.5rem;font:16px/1.5 system-ui,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2328;background:#fff}}
main{{max-width:{CONTENT_WIDTH_PX}px;margin:0 auto}}
h1{{font-size:1.8rem;margin:0 0 1rem;padding-bottom:.3rem;border-bottom:1px solid #d0d7de}}
h2{{font-size:1.4rem;margin:2.5rem 0 .8rem;padding-bottom:.2rem;border-bottom:1px solid #d0d7de}}
h3{{font-size:1.1rem;margin:1.6rem 0 .6rem}}
a{{color:#0969da}}
code{{background:#eff2f5;padding:0 .25em;border-radius:3px;font-size:.88em;overflow-wrap:anywhere}}
img{{max-width:100%;height:auto;display:block}}
figure{{margin:1rem 0}}
figcaption{{font-size:.9rem;color:#57606a;margin-top:.3rem}}
.gallery{{display:flex;flex-wrap:wrap;gap:.5rem}}
.table-wrap{{overflow-x:auto}}
table{{border-collapse:collapse;font-size:.95rem;font-variant-numeric:tabular-nums}}
th,td{{border:1px solid #d0d7de;padding:.25rem .7rem;text-align:right;white-space:nowrap}}
th{{background:#f6f8fa}}
th:first-child,td:first-child{{text-align:left}}
tbody tr:nth-child(even){{background:#fafbfc}}
"""
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def slugs(blocks: list[Block]) -> list[str | None]:
    """GitHub's anchor of each heading block (``None`` for other blocks); repeats get ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    out: list[str | None] = []
    for kind, *c in blocks:
        if kind not in ("h1", "h2", "h3"):
            out.append(None)
            continue
        base = re.sub(r"[^\w\- ]", "", c[0].lower()).replace(" ", "-")
        out.append(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def _toc(blocks: list[Block]) -> list[tuple[str, str]]:
    """(heading text, anchor) of every h2."""
    return [(b[1], slug) for b, slug in zip(blocks, slugs(blocks)) if b[0] == "h2" and slug]


def _md_figure(caption: str, images: list[tuple[str, str]]) -> str:
    return " ".join(f"![{alt}]({src})" for alt, src in images) + f"\n\n*{caption}*"


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as Markdown."""
    out: list[str] = []
    for kind, *c in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {c[0]}")
        elif kind == "p":
            out.append(c[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in c[0]))
        elif kind == "toc":
            out.append("\n".join(f"- [{text}](#{slug})" for text, slug in _toc(blocks)))
        elif kind == "table":
            header, rows = c
            lines = [header, ["---"] * len(header), *rows]
            out.append("\n".join("| " + " | ".join(cells) + " |" for cells in lines))
        elif kind == "img":
            out.append(_md_figure(c[0], [(c[0], c[1])]))
        elif kind == "gallery":
            out.append(_md_figure(c[0], c[1]))
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """HTML of a text: escaped, with `code` spans as <code> and [label](href) as links."""
    out: list[str] = []
    for k, part in enumerate(re.split(r"`([^`]+)`", text)):
        if k % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        pos = 0
        for m in _LINK.finditer(part):
            out.append(html.escape(part[pos:m.start()]) + f'<a href="{html.escape(m[2])}">{html.escape(m[1])}</a>')
            pos = m.end()
        out.append(html.escape(part[pos:]))
    return "".join(out)


def _html_figure(caption: str, images: list[tuple[str, str]], cls: str = "") -> str:
    imgs = "".join(f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">' for alt, src in images)
    body = f'<div class="{cls}">{imgs}</div>' if cls else imgs
    return f"<figure>{body}<figcaption>{_inline(caption)}</figcaption></figure>"


def to_html(blocks: list[Block]) -> str:
    """Render blocks as one self-contained HTML page (no external assets); the title is the first h1."""
    body: list[str] = []
    for (kind, *c), slug in zip(blocks, slugs(blocks)):
        if kind in ("h1", "h2", "h3"):
            body.append(f'<{kind} id="{slug}">{_inline(c[0])}</{kind}>')
        elif kind == "p":
            body.append(f"<p>{_inline(c[0])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in c[0]) + "</ul>")
        elif kind == "toc":
            body.append('<nav><ul>' + "".join(f'<li><a href="#{s}">{_inline(t)}</a></li>' for t, s in _toc(blocks)) + "</ul></nav>")
        elif kind == "table":
            header, rows = c
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in r) + "</tr>" for r in rows)
            body.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table></div>')
        elif kind == "img":
            body.append(_html_figure(c[0], [(c[0], c[1])]))
        elif kind == "gallery":
            body.append(_html_figure(c[0], c[1], "gallery"))
        else:
            raise ValueError(f"unknown block kind {kind!r}")
    title = html.escape(next(c[0] for kind, *c in blocks if kind == "h1").replace("`", ""))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>'
            f"<style>\n{CSS}</style></head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


@contextlib.contextmanager
def figure(path: Path, width_px: int, height_px: int,
           margins_px: tuple[int, int, int, int] | None = None) -> Iterator[Figure]:
    """A matplotlib figure of exactly ``width_px`` × ``height_px`` in the report's style, saved as PNG on exit.

    Laid out by matplotlib's constrained layout, or, with ``margins_px`` (left, right, bottom, top),
    by those fixed margins: for the many small figures of one kind, where the layout solver would
    cost more than the drawing.
    """
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=None if margins_px else "constrained")
        if margins_px:
            left, right, bottom, top = margins_px
            fig.subplots_adjust(left=left / width_px, right=1 - right / width_px, bottom=bottom / height_px,
                                top=1 - top / height_px)
        yield fig
        fig.savefig(path, dpi=DPI)


def palette(n: int) -> list[str]:
    """``n`` distinguishable colours: tab10's, then tab20's lighter shades, then repeating."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab20 = colormaps["tab20"].colors
    order = [*tab20[0::2], *tab20[1::2]]
    return [to_hex(order[k % len(order)]) for k in range(n)]

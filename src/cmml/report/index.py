"""Stage handler ``index``: ``results/index.md`` and ``index.html`` linking every family's report page."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from cmml.errors import DataError
from cmml.provenance.sidecar import stage_run

FAMILY_TITLES = {
    "cmml": "Continual missing-modality learning (RebQ and continual baselines)",
    "robust": "Robust adaptation per missing-modality combination (Reza et al.)",
    "micl": "Modality-inconsistent continual learning (MoInCL)",
}


def run(stage: Any, params: dict[str, Any]) -> None:
    """Write the index of the family report pages (each must exist)."""
    a = stage.args
    md_path, html_path = Path(a["md"]), Path(a["html"])
    links = []
    for fam, page in a["pages"].items():
        if not Path(page).is_file():
            raise DataError(f"{page}: report page of family {fam!r} missing; run its report stage first")
        links.append((FAMILY_TITLES.get(fam, fam), fam, os.path.relpath(page, html_path.parent)))
    title = params["report"]["title"]
    md = [f"# {title}", "", "Reports by experiment family:", ""]
    md += [f"- [{t}]({href}) (`{fam}`)" for t, fam, href in links]
    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(t)}</a> (<code>{html.escape(fam)}</code>)</li>'
                    for t, fam, href in links)
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head>"
            f"<body style=\"font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem\">"
            f"<h1>{html.escape(title)}</h1><p>Reports by experiment family:</p><ul>{items}</ul></body></html>\n")
    with stage_run(stage, params, extra={"families": list(a["pages"])}) as sr:
        sr.tmp(a["md"]).write_text("\n".join(md) + "\n", encoding="utf-8")
        sr.tmp(a["html"]).write_text(page, encoding="utf-8")

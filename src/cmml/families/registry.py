"""Family registry: params section name -> the family's plan module.

A family's plan module provides (duck-typed, see :mod:`cmml.families.cmml.plan`):

* ``validate(params, where)`` -- check the family's params section (no torch import);
* ``needs(params) -> list[tuple[str, int]]`` -- the (missing setting, seed) pairs its stages read,
  so the shared data stages (missing tables, one backbone per seed) are planned once;
* ``plan(params, data, params_file) -> list[Stage]`` -- its stages, results under
  ``results/<family>/`` and artefacts under ``runs/<family>/``;
* ``report_page(params) -> str`` -- its report page, linked from ``results/index.html``.

A family is active when params.yaml has its section. Adding a family = its package + one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

FAMILIES: dict[str, str] = {
    "cmml": "cmml.families.cmml.plan",
    "robust": "cmml.families.robust.plan",
    "micl": "cmml.families.micl.plan",
}


def active(params: dict[str, Any]) -> list[str]:
    """Names of the families that have a section in ``params``, in registry order."""
    return [name for name in FAMILIES if name in params]


def family(name: str) -> ModuleType:
    """The plan module of family ``name``."""
    return importlib.import_module(FAMILIES[name])

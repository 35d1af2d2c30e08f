"""The cmml family's params section resolved into runs: (method run, missing setting, seed).

``params["cmml"]`` holds ``methods`` (run name -> {method: registry name, hyper-parameters...},
``base:`` inherits from another run) and ``experiments`` (name -> methods x settings x seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmml.config import block_chain, merged_block

SECTION = "cmml"
INIT_ROW = -1  # evaluation row of the untrained model (for FWT)


@dataclass(frozen=True)
class Run:
    """One continual run: a method run name under a missing setting with a seed."""

    method: str
    setting: str
    seed: int

    @property
    def key(self) -> str:
        """``<setting>/<method>/seed<k>``: the run's identity in paths and tables."""
        return f"{self.setting}/{self.method}/seed{self.seed}"


def runs(params: dict[str, Any]) -> list[Run]:
    """Every (method run, setting, seed) of every experiment, deduplicated, in a stable order."""
    seen: dict[Run, None] = {}
    for exp in params[SECTION]["experiments"].values():
        for m in exp["methods"]:
            for s in exp["settings"]:
                for seed in exp["seeds"]:
                    seen[Run(m, s, seed)] = None
    return list(seen)


def method_chain(params: dict[str, Any], run: str, where: str = "params.yaml") -> list[str]:
    """Run names from ``run`` up its ``base:`` chain."""
    return block_chain(params[SECTION]["methods"], run, f"{SECTION}.methods", where)


def method_block(params: dict[str, Any], run: str, where: str = "params.yaml") -> dict[str, Any]:
    """The merged hyper-parameters of a method run (with ``method``, without ``base``)."""
    return merged_block(params[SECTION]["methods"], run, f"{SECTION}.methods", where)


def row_label(row: int) -> str:
    """Matrix row label: ``init`` for the untrained model, else ``task<t>``."""
    return "init" if row == INIT_ROW else f"task{row}"

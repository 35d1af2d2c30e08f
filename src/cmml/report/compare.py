"""``cmml publish`` and ``cmml compare``: the committed reference results and a reproduction of them.

The pipeline writes ``results/`` (not in git: a clone reproduces it, or ``dvc pull`` restores it);
``cmml publish`` copies a finished ``results/`` to ``reference/`` (committed). ``cmml compare``
puts a reproduction next to the reference, per family, group (setting/method) and metric: the
difference of the seed means in units of the reference's seed std, and a verdict —
``identical`` (same value), ``within noise`` (|z| <= 2), ``differs`` (|z| > 2, or any difference
where the reference has no std). It exits 1 when anything differs. On the machine that made the
reference, a rerun is byte-identical; on another machine floating-point kernels differ, and the
seeds (which cover the backbone's pretraining too) give the noise scale such a rerun stays within.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from cmml.errors import DataError

NOISE_Z = 2.0


def publish(results: Path = Path("results"), reference: Path = Path("reference")) -> int:
    """Replace ``reference`` by a copy of ``results`` (the copy is made beside it, then renamed)."""
    if not (results / "index.md").is_file():
        raise DataError(f"{results}/index.md: missing; run the whole pipeline before publishing")
    tmp = reference.with_name(f".{reference.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(results, tmp)
    shutil.rmtree(reference, ignore_errors=True)
    tmp.rename(reference)
    print(f"published {results}/ to {reference}/ ({sum(1 for p in reference.rglob('*') if p.is_file())} files)")
    return 0


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read metrics ({exc})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object of groups")
    return doc


def verdict(ref: dict[str, Any], new: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """(verdict, difference of means, z) of one metric's ``{mean, std}`` records."""
    a, b, sd = ref.get("mean"), new.get("mean"), ref.get("std")
    if a is None and b is None:
        return "identical", None, None
    if a is None or b is None:
        return "differs", None, None
    diff = b - a
    if diff == 0:
        return "identical", 0.0, 0.0
    if not sd or (isinstance(sd, float) and math.isnan(sd)):
        return "differs", diff, None
    z = diff / sd
    return ("within noise" if abs(z) <= NOISE_Z else "differs"), diff, z


def compare(reference: Path = Path("reference"), results: Path = Path("results")) -> tuple[list[str], int]:
    """Lines of the comparison table and the number of metrics that differ."""
    lines, differs = [], 0
    families = sorted(p.parent.name for p in reference.glob("*/metrics.json"))
    if not families:
        raise DataError(f"{reference}: no <family>/metrics.json to compare against")
    for fam in families:
        ref, new_path = _load(reference / fam / "metrics.json"), results / fam / "metrics.json"
        if not new_path.is_file():
            raise DataError(f"{new_path}: missing; reproduce the results first (snakemake --cores N or dvc repro)")
        new = _load(new_path)
        same_bytes = (reference / fam / "metrics.json").read_bytes() == new_path.read_bytes()
        lines.append(f"[{fam}] metrics.json {'byte-identical' if same_bytes else 'differs in bytes'}")
        counts: dict[str, int] = {}
        for group in sorted(set(ref) | set(new)):
            if group not in ref or group not in new:
                lines.append(f"  {group}: only in {'reference' if group in ref else 'results'}")
                differs += 1
                continue
            for metric, rec in sorted(ref[group].items()):
                if not isinstance(rec, dict) or "mean" not in rec:
                    continue
                v, diff, z = verdict(rec, new[group].get(metric, {}))
                counts[v] = counts.get(v, 0) + 1
                if v != "identical":
                    zs = "n/a" if z is None else f"{z:+.2f}"
                    ds = "n/a" if diff is None else f"{diff:+.2f}"
                    lines.append(f"  {group} {metric}: reference {rec.get('mean')} ± {rec.get('std')}, "
                                 f"now {new[group].get(metric, {}).get('mean')} (diff {ds}, z {zs}): {v}")
                differs += v == "differs"
        lines.append(f"  verdicts: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return lines, differs


def main_compare(reference: str, results: str) -> int:
    """`cmml compare`: print the table; 1 when any metric differs beyond the noise."""
    lines, differs = compare(Path(reference), Path(results))
    print("\n".join(lines))
    print(f"compare: {'OK' if not differs else f'{differs} metric(s) differ beyond {NOISE_Z:g} std'}")
    return 1 if differs else 0

"""Model-card tables from a bundle's held-out metrics or an experiment's JSON: the numbers, never retyped.

``python -m training card BUNDLE_OR_JSON`` prints markdown: the leave-one-corpus-out
table (each held-out corpus and their mean), the by-speaker table, with and without
enrolment, and the lean of a new speaker (valence bias, neutral centroid).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

LOCO = ("corpus:ravdess", "corpus:emovo", "corpus:jl")
SCORES = ("uar", "ccc_valence", "ccc_arousal")
LEAN = ("valence_bias", "neutral_v", "neutral_a", "neutral_r")


def load_summary(path: str | Path) -> dict[str, Any]:
    """The per-protocol summary (metric -> mean/std/...) of a bundle folder, a bundle.json or an experiment JSON."""
    path = Path(path)
    if path.is_dir():
        path = path / "bundle.json"
    data = json.loads(path.read_text())
    if "metrics" in data:
        return dict(data["metrics"]["held_out"]["protocols"])
    return dict(data["summary"])


def _cell(stats: Mapping[str, Any] | None) -> str:
    if not stats or stats.get("mean") is None or not math.isfinite(float(stats["mean"])):
        return "–"
    std = stats.get("std")
    spread = f" ± {float(std):.2f}" if std is not None and math.isfinite(float(std)) and stats.get("n", 1) > 1 else ""
    return f"{float(stats['mean']):.2f}{spread}"


def _mean_of(summary: Mapping[str, Any], protocols: Sequence[str], key: str) -> str:
    values = [float(summary[p][key]["mean"]) for p in protocols
              if key in summary.get(p, {}) and summary[p][key].get("mean") is not None
              and math.isfinite(float(summary[p][key]["mean"]))]
    return f"{sum(values) / len(values):.2f}" if values else "–"


def score_table(summary: Mapping[str, Any]) -> str:
    """UAR and CCCs per held-out corpus and by speaker, enrolled and not (mean ± sd over folds x seeds)."""
    loco = [p for p in LOCO if p in summary]
    rows = ["| held out | " + " | ".join(f"{k} {e}" for e in ("enrolled", "not enrolled") for k in SCORES) + " |",
            "|---|" + "---|" * (2 * len(SCORES))]
    for protocol in [*loco, "speakers"]:
        if protocol not in summary:
            continue
        cells = [_cell(summary[protocol].get(pre + k)) for pre in ("", "unenrolled_") for k in SCORES]
        name = "RAVDESS 4-fold by actor" if protocol == "speakers" else protocol.split(":")[1]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        if loco and protocol == loco[-1]:
            means = [_mean_of(summary, loco, pre + k) for pre in ("", "unenrolled_") for k in SCORES]
            rows.append("| **mean of the corpora** | " + " | ".join(f"**{m}**" for m in means) + " |")
    return "\n".join(rows)


def lean_table(summary: Mapping[str, Any]) -> str:
    """A new speaker's lean: valence bias and neutral/calm centroid, enrolled and not, per held-out corpus."""
    rows = ["| held out | enrolment | valence bias | neutral centroid (v, a) | distance from centre |",
            "|---|---|---|---|---|"]
    for protocol in [p for p in (*LOCO, "speakers") if p in summary]:
        for pre, label in (("", "enrolled"), ("unenrolled_", "not enrolled")):
            s = summary[protocol]
            centroid = f"({_cell(s.get(pre + 'neutral_v'))}, {_cell(s.get(pre + 'neutral_a'))})"
            name = "RAVDESS by actor" if protocol == "speakers" else protocol.split(":")[1]
            rows.append(f"| {name} | {label} | {_cell(s.get(pre + 'valence_bias'))} | {centroid} | "
                        f"{_cell(s.get(pre + 'neutral_r'))} |")
    return "\n".join(rows)


def card_tables(summary: Mapping[str, Any]) -> str:
    return "### Scores\n\n" + score_table(summary) + "\n\n### Lean of a new speaker\n\n" + lean_table(summary) + "\n"

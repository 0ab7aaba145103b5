"""One row per measured goal, printed as a table and written to bench/results.json."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    metric: str
    project: float
    peer: float | None
    peer_name: str
    unit: str
    goal: str
    met: bool | None  # None: no goal, reported for comparison

    @property
    def ratio(self) -> float | None:
        if self.peer in (None, 0):
            return None
        return self.project / self.peer


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def show(rows: list[Row]) -> str:
    header = ("metric", "project", "peer", "ratio", "goal", "met")
    lines = [header]
    for r in rows:
        peer = f"{_num(r.peer)} {r.unit} ({r.peer_name})" if r.peer is not None else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        lines.append((r.metric, f"{_num(r.project)} {r.unit}", peer, ratio, r.goal or "-", met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def write(rows: list[Row], path: Path, quick: bool) -> None:
    data = {
        "quick": quick,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.machine()},
        "rows": [asdict(r) | {"ratio": r.ratio} for r in rows],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"

"""Shared output for the perf scripts: one table row per target, JSON beside it, optional plot.

Every figure is printed beside a limit measured in the same run on the same machine, because
the machines here are shared and noisy: the ratio is what is compared against the target.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS_DIR = Path(os.environ.get("MOORAGE_PERF_DIR", Path(__file__).parent / "results"))


@dataclass
class Row:
    """One checked figure: `measured` against `target`, with `limit` as the physical bound."""

    id: str
    what: str
    unit: str
    target: str
    measured: float
    limit: float | None
    passed: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.limit in (None, 0):
            return None
        return self.measured / self.limit


@dataclass
class Report:
    name: str
    rows: list[Row] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def print(self) -> None:
        head = (f"{'id':<6} {'what':<44} {'target':<22} {'measured':>12} {'limit':>12} "
                f"{'ratio':>7}  ok")
        print(f"\n== {self.name} ==")
        print(head)
        print("-" * len(head))
        for r in self.rows:
            lim = "-" if r.limit is None else f"{r.limit:.4g}"
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
            mark = "PASS" if r.passed else "FAIL"
            print(
                f"{r.id:<6} {r.what[:44]:<44} {r.target[:22]:<22} "
                f"{r.measured:>10.4g}{r.unit:>2} {lim:>12} {ratio:>7}  {mark}"
            )
            if r.note:
                print(f"       {r.note}")

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        doc = {
            "name": self.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "rows": [asdict(r) | {"ratio": r.ratio} for r in self.rows],
            "extra": self.extra,
        }
        path.write_text(json.dumps(doc, indent=2))
        print(f"wrote {path}")
        return path

    def finish(self) -> int:
        """Print, write, and return the process exit code (1 if any row failed)."""
        self.print()
        self.write()
        return 0 if all(r.passed for r in self.rows) else 1


def percentiles(samples_us: Sequence[float], ps: Sequence[float] = (50, 90, 99, 99.9)) -> dict:
    """Exact percentiles of a sample list (nearest rank), in the samples' unit."""
    s = sorted(samples_us)
    if not s:
        return {p: float("nan") for p in ps}
    out = {}
    for p in ps:
        k = min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))
        out[p] = s[k]
    return out


def plot_percentiles(
    name: str, series: dict[str, Sequence[float]], unit: str = "µs"
) -> Path | None:
    """Draw a latency-by-percentile plot (log x axis of 1/(1-p)), one line per series."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install '.[perf]'): no plot drawn")
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, samples in series.items():
        s = sorted(samples)
        n = len(s)
        if n == 0:
            continue
        xs = [1 / (1 - (i + 0.5) / n) for i in range(n)]
        ax.plot(xs, s, label=label)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("percentile")
    ax.set_ylabel(f"latency ({unit})")
    ax.set_title(name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path = RESULTS_DIR / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path

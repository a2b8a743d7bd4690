"""P15: `moorage up` -> every actor of the default tree answering `sys.ping`.

    python -m perf.p15_startup [--runs 5]
"""

from __future__ import annotations

import argparse
import sys

from perf._report import Report, Row, percentiles
from perf._tree import BenchTree, compile_package


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    report = Report("p15_startup")
    compiled = compile_package()
    times = []
    for _ in range(args.runs):
        tree = BenchTree()
        try:
            times.append(tree.start())
        finally:
            tree.stop()
    p = percentiles(times)
    report.add(Row("P15", "moorage up -> every actor answering (max)", "s", "<= 1.5 s",
                   max(times), None, max(times) <= 1.5,
                   note=f"{args.runs} runs; p50 {p[50]:.3f} s; includes interpreter start; "
                   + ("bytecode compiled, as an install has it" if compiled else
                      "NOT all bytecode could be written: modules compiled at each start")))
    report.extra = {"seconds": times, "bytecode": compiled}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())

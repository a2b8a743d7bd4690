"""The loops a push costs the metrics actor: its histograms read, and their counts merged.

A client's ping push holds about 75 distinct values an op, read from the histogram's varints
and then added into three counters (the series' lifetime, its window and the window's
slot). In Python those loops took half the CPU the actor spent on such a push (cProfile;
260-310 µs a push in all, 190-220 with them compiled); they run compiled where the optional
extension was built (_ccounts.c). The Python loops here are the reference and the fallback:
COUNTS_CORE says which this process runs (the actor's `sys.info` `counts_core`),
MOORAGE_METRICS_CORE=python picks the Python ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable

_VARINT_BYTES = 8  # 56 bits: a count past 2^54 cannot match a push's ok + error anyway
TOO_LONG = "hist: a count's varint is too long"
CUT_OFF = "hist: the counts end inside a varint"
PAST_END = "hist: more counts than the histogram's shape has"


def read_counts_python(payload: bytes, start: int, value_at: tuple[int, ...]
                       ) -> tuple[dict[int, int], int, int, int]:
    """payload[start:], the counts array of an encoded histogram (ZigZag LEB128 varints, a
    negative one a run of zero counts), as {value_at[index]: count}, with the varints it took,
    the counts' total and the sum of value x count; ValueError if it is malformed. Every
    varint moves the index on and none may move it past value_at's end, so one array costs
    at most its length in varints whatever it holds."""
    counts: dict[int, int] = {}  # (a dict's item assignment is half the cost of a Counter's)
    size = len(value_at)
    idx = varints = total = total_us = 0
    it = iter(memoryview(payload)[start:])
    try:
        for b in it:
            varints += 1
            if b > 0x7F:
                v, shift = b & 0x7F, 7
                for b in it:  # the rest of this varint
                    v |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift == 7 * _VARINT_BYTES:
                        raise ValueError(TOO_LONG)
                else:
                    raise ValueError(CUT_OFF)
                b = v
            if not b:  # one zero count
                idx += 1
                if idx > size:
                    raise ValueError(PAST_END)
            elif b & 1:  # ZigZag -n: n zero counts
                idx += (b + 1) >> 1
                if idx > size:
                    raise ValueError(PAST_END)
            else:
                value, n = value_at[idx], b >> 1
                counts[value] = n
                total += n
                total_us += value * n
                idx += 1
    except IndexError:  # a non-zero count at or past the end
        raise ValueError(PAST_END) from None
    return counts, varints, total, total_us


def add_counts_python(target: dict[int, int], source: dict[int, int]) -> None:
    """target[k] = target.get(k, 0) + n for each k, n of source (Counter.update's loop; both
    dicts, a Counter being one)."""
    get = target.get
    for k, n in source.items():
        target[k] = n + get(k, 0)


ReadCounts = Callable[[bytes, int, tuple[int, ...]], tuple[dict[int, int], int, int, int]]
AddCounts = Callable[[dict[int, int], dict[int, int]], None]
read_counts: ReadCounts = read_counts_python
add_counts: AddCounts = add_counts_python
COUNTS_CORE = "python"
if os.environ.get("MOORAGE_METRICS_CORE") != "python":
    try:
        from moorage.actors.metrics import _ccounts
    except ImportError:  # (not built: the Python loops)
        pass
    else:
        read_counts, add_counts = _ccounts.read_counts, _ccounts.add_counts
        COUNTS_CORE = "compiled"

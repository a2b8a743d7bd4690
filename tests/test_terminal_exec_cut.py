"""term.exec's output cut to its last `max_output_bytes`: the cut falls at a byte count, and
the text began where it fell, inside a colour's sequence (`38;5;196mred059673`, `0m`) or a
character (U+FFFD): it now starts after the sequence or the character it fell in. Real
tree, real bash."""

from __future__ import annotations

import re

import pytest

from tests.terminal_support import integrated_session, terminal_tree

pytestmark = pytest.mark.timeout(120)

LIMIT = 4096
TREE = terminal_tree(f"max_output_bytes = {LIMIT}\n")
LINE = "\\x1b[38;5;196mred%06d\\x1b[0m\\n"  # 26 bytes on the terminal (LF made CR LF)


def test_a_cut_output_starts_at_a_sequence_a_line_or_a_character(make_tree, tmp_path):
    """The same 400 coloured lines then K bytes more, for K over a whole line's length: the
    cut lands at every place in a line, in and out of its sequences; then characters of
    four bytes, the cut at each place in one."""
    s = integrated_session(make_tree(TREE).start(), tmp_path, "bash")
    for k in range(26):
        r = s.exec(f"printf '{LINE}%.0s' $(seq 1 400) | awk '{{sub(/%06d/, NR)}} 1'; "
                   f"printf 'z%.0s' $(seq 1 {k + 1}); echo")
        assert r["truncated"], r
        first, *lines = r["output"].split("\n")
        # (a cut in the text of a line leaves the rest of it: `d000123`, `23`)
        assert re.fullmatch(r"(red|ed|d)?\d*|z*", first), (k, first)
        assert all(re.fullmatch(r"red\d{6}|z+|", line) for line in lines), (k, lines[:3])
    for k in range(4):
        r = s.exec(f"printf '\\xf0\\x9f\\x98\\x80%.0s' $(seq 1 1100); "
                   f"printf 'z%.0s' $(seq 1 {k + 1}); echo")
        assert r["truncated"], r
        assert "\ufffd" not in r["output"] and r["output"].startswith("\U0001f600"), (k, r)

"""`moorage call` on input that parses yet cannot be sent (an integer msgpack does not carry,
a string that is not UTF-8, JSON nested past what the parser takes): a usage error, exit 2,
one line that says where, before anything is sent; and `--data TEXT` is the bytes given on
the command line, UTF-8 or not. On a real tree, so that what is not refused goes through."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_cli import moorage

pytestmark = pytest.mark.timeout(180)

TREE = """
[supervisor]
heartbeat = { interval_ms = 1000, misses = 30 }
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
"""


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# (the arguments, as the command line has them; what the one line must say)
UNSENDABLE = [
    (json.dumps({"n": 2**64}), b"n: 18446744073709551616 is outside the integers"),
    (json.dumps({"n": -(2**63) - 1}), b"n: -9223372036854775809 is outside the integers"),
    ('{"a": {"b": [1, "\\ud800"]}}', b"a.b[1]: a string that is not UTF-8 text (\\ud800"),
    ('{"\\udfff": 1}', b"a key that is not UTF-8 text (\\udfff"),
    (b'{"a": "ok \xff"}', b"a: a string that is not UTF-8 text (\\udcff at character 3)"),
    (nested(2000), b"nest too deeply to be parsed"),
    ('{"n": ' + "9" * 5000 + "}", b"an integer of more than 4300 digits is outside"),
]


def test_arguments_msgpack_cannot_carry_are_refused_as_bad_input(make_tree):
    tree = make_tree(TREE).start()
    for given, said in UNSENDABLE:
        out = moorage(tree, "call", "alpha", "fake.work", given)
        assert out.returncode == 2, (said, out.stderr)
        assert out.stderr.startswith(b"moorage: ") and out.stderr.count(b"\n") == 1, out.stderr
        assert said in out.stderr, out.stderr
        assert b"bug" not in out.stderr and b"Traceback" not in out.stderr
        assert out.stdout == b""
    # Refused before sending: the actor did no work for any of them.
    assert tree.call("alpha", "fake.work")["done"] == 1


def test_the_integers_msgpack_carries_are_sent_up_to_either_end(make_tree):
    tree = make_tree(TREE).start()
    for n in (2**64 - 1, -(2**63), 0):
        out = moorage(tree, "call", "alpha", "fake.work", json.dumps({"n": n}))
        assert out.returncode == 0, (n, out.stderr)
        assert json.loads(out.stdout)["pid"] == tree.child("alpha")["pid"]
    # a depth the parser takes reaches the actor, which answers for its own limit
    out = moorage(tree, "call", "alpha", "fake.work", nested(40))
    assert out.returncode == 2 and b"bad_request" in out.stderr, out.stderr


def test_data_text_is_the_bytes_given_on_the_command_line(make_tree, tmp_path: Path):
    tree = make_tree(TREE).start()
    for i, text in enumerate([b"\xff\xfe bytes \x80 not UTF-8\n", "caf\u00e9 \u2713\n".encode()]):
        dst = tmp_path / f"written-{i}"
        out = moorage(tree, "call", "watcher", "fs.write", json.dumps({"path": str(dst)}),
                      b"--data", text)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["bytes"] == len(text)
        assert dst.read_bytes() == text


def test_data_that_is_not_bytes_of_a_command_line_is_bad_input():
    """main() given a list of str (not argv) may hold a surrogate os.fsencode cannot give
    back: refused as input, not an error of ours."""
    script = ("import sys\n"
              "from moorage.supervisor.cli.commands import main\n"
              "sys.exit(main(['--instance-dir', sys.argv[1], 'call', 'alpha', 'fake.work',"
              " '--data', 'x\\ud800']))\n")
    out = subprocess.run([sys.executable, "-c", script, "/nonexistent-moorage-dir"],
                         capture_output=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(b"moorage: --data:"), out.stderr
    assert b"bug" not in out.stderr

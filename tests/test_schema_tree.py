"""A running default tree serves, in `sys.info`, the op table that ops.json was generated from:
the same ops on the same actors, with the same results, errors and attachments (so no op is
served that the generator did not see, such as one of a component missing from an actor's
`op_providers`)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_actor_of_the_default_tree_serves_the_ops_of_ops_json(make_tree):
    config = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    tree = make_tree(config).start()
    doc = json.loads((ROOT / "protocol/schema/ops.json").read_text())["ops"]
    actors = tree.call("supervisor", "sup.endpoints")
    served: dict[str, list[str]] = {}
    for actor in actors:
        table = tree.call(actor, "sys.info")["ops"]
        for name, entry in table.items():
            assert name in doc, f"{actor} serves {name}, which ops.json lacks"
            want = doc[name]
            got = {k: entry[k] for k in ("result", "errors", "attachments", "idempotent",
                                         "resumable", "essential", "doc")}
            assert got == {k: want[k] for k in got}, (actor, name)
            served.setdefault(name, []).append(actor)
    assert {n: sorted(a) for n, a in served.items()} == {
        n: sorted(e["actors"]) for n, e in doc.items()}


@pytest.mark.slow
def test_the_ops_no_other_test_calls_answer_as_declared(make_tree, tmp_path):
    # The live check (conftest.py) holds these replies against ops.json: sys.heartbeat and
    # sup.orphan_exit are otherwise asked only between actors, sys.stop and fs.list not at all.
    config = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    tree = make_tree(config).start()
    (tmp_path / "a.txt").write_text("a")
    listed = tree.call("watcher", "fs.list", {"path": str(tmp_path)})
    assert [e["name"] for e in listed["entries"]] == ["a.txt"]
    for actor in tree.call("supervisor", "sup.endpoints"):
        assert tree.call(actor, "sys.heartbeat")["ep"]
    with pytest.raises(MoorageError) as exc:
        tree.call("supervisor", "sup.orphan_exit", {"pid": 1})
    assert exc.value.name == "not_found"
    old = tree.call("parser", "sys.hello")["ep"]
    assert tree.call("parser", "sys.stop") == {"stopping": True}
    wait_for(lambda: tree.child("parser")["state"] == "running"
             and tree.call("parser", "sys.hello")["ep"] != old, "the parser's successor")

"""A client knows which ops are idempotent before any actor has told it: the schema's
(protocol/schema/ops.json, generated into each client as its known ops), so that a read-only
call to an actor that cannot answer its sys.info now (stopped, restarting, crash-looping) is
resent and ends `timeout`, never `outcome_unknown`. Once an actor's sys.info is learned, its
own table replaces the schema's for that actor (PROTOCOL.md section 10)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from moorage.protocol.client import Client
from moorage.protocol.client._core import CallPlan
from moorage.protocol.errors import MoorageError
from moorage.protocol.schema import generate

pytestmark = pytest.mark.timeout(60)

WATCHER = "moorage.actors.watcher.actor:WatcherActor"


def test_a_read_only_call_to_an_actor_that_cannot_say_its_ops_ends_timeout(
        runtime_dir, spawn_actor, client, data):
    watcher = spawn_actor(WATCHER, "watcher", roots=[str(data)], settle_ms=10)
    client.hello("watcher")  # it serves: what follows is a stopped actor, not one not started
    os.kill(watcher.pid, signal.SIGSTOP)
    try:
        with Client(runtime_dir, timeout=1.0) as fresh:
            with pytest.raises(MoorageError) as e:
                fresh.call("watcher", "fs.stat", {"path": str(data)})
            assert e.value.name == "timeout", e.value
            assert "watcher" not in fresh.core.learned  # (its sys.info went unanswered)
    finally:
        os.kill(watcher.pid, signal.SIGCONT)


def test_a_read_only_call_to_an_actor_whose_process_is_gone_ends_timeout(
        runtime_dir, spawn_actor, client, data):
    """As between the restarts of a crash loop: its endpoint is there, nothing answers."""
    watcher = spawn_actor(WATCHER, "watcher", roots=[str(data)], settle_ms=10)
    client.hello("watcher")
    watcher.stop()
    assert (runtime_dir / "watcher.rpc").exists()
    with Client(runtime_dir, timeout=1.0) as fresh:
        with pytest.raises(MoorageError) as e:
            fresh.call("watcher", "fs.stat", {"path": str(data)})
        assert e.value.name == "timeout", e.value


def test_a_read_only_call_made_while_its_actor_is_stopped_is_answered_once_it_goes_on(
        runtime_dir, spawn_actor, client, data):
    watcher = spawn_actor(WATCHER, "watcher", roots=[str(data)], settle_ms=10)
    client.hello("watcher")
    os.kill(watcher.pid, signal.SIGSTOP)
    try:
        with Client(runtime_dir, timeout=1.0) as fresh:
            with pytest.raises(MoorageError):
                fresh.call("watcher", "fs.stat", {"path": str(data)})
            os.kill(watcher.pid, signal.SIGCONT)
            got = fresh.call("watcher", "fs.stat", {"path": str(data)}, timeout=30.0)
            assert got["type"] == "dir"
            assert "fs.stat" in fresh.core.learned["watcher"]
    finally:
        os.kill(watcher.pid, signal.SIGCONT)


def test_once_an_actor_has_said_its_ops_its_table_replaces_the_schemas(
        runtime_dir, spawn_actor):
    spawn_actor()  # "fake": the built-ins and fake.*, no fs.stat
    with Client(runtime_dir, timeout=10.0) as c:
        assert CallPlan(c.core, "fake", "fs.stat", None, 1.0, None).idempotent
        assert CallPlan(c.core, "fake", "sys.config", None, 1.0, None).idempotent
        c.call("fake", "fake.effect")  # (its first call asks its sys.info)
        assert "fs.stat" not in c.core.learned["fake"]
        assert not CallPlan(c.core, "fake", "fs.stat", None, 1.0, None).idempotent
        assert CallPlan(c.core, "fake", "sys.config", None, 1.0, None).idempotent
        assert not CallPlan(c.core, "fake", "fake.effect", None, 1.0, None).idempotent
        # An actor not asked yet keeps the schema's.
        assert CallPlan(c.core, "watcher", "fs.stat", None, 1.0, None).idempotent
        assert not CallPlan(c.core, "watcher", "fs.write", None, 1.0, None).idempotent


# --- the generated known ops follow the declarations ---------------------------------------------


def test_each_clients_known_ops_are_what_the_declarations_generate():
    texts = generate.known_ops_texts()
    assert set(texts) == {generate.KNOWN_OPS_PY, generate.KNOWN_OPS_TS, generate.KNOWN_OPS_RS}
    for path, text in texts.items():
        assert path.read_text() == text, f"stale: {path} (run python -m " \
            "moorage.protocol.schema.generate)"
        assert "do not edit" in text and '"fs.stat"' in text and '"fs.write"' not in text


def test_the_python_clients_known_ops_are_the_ops_json_idempotent_ones():
    from moorage.protocol.client._known_ops import SCHEMA_IDEMPOTENT  # (generated)

    ops = json.loads(generate.OPS_JSON.read_text())["ops"]
    assert {name for name, d in ops.items() if d["idempotent"]} == SCHEMA_IDEMPOTENT
    assert {"fs.stat", "fs.read", "term.list", "sys.config"} <= SCHEMA_IDEMPOTENT
    assert not {"fs.write", "term.exec", "term.create", "sys.stop"} & SCHEMA_IDEMPOTENT


@pytest.mark.parametrize("name", ["KNOWN_OPS_PY", "KNOWN_OPS_TS", "KNOWN_OPS_RS"])
def test_check_names_a_stale_known_ops_file_and_passes_a_current_one(
        name, tmp_path: Path, monkeypatch, capsys):
    real: Path = getattr(generate, name)
    copy = tmp_path / real.name
    monkeypatch.setattr(generate, name, copy)
    copy.write_text(real.read_text().replace('"fs.stat"', '"fs.stale"'))
    assert generate.main(["--check"]) == 1
    assert f"stale: {copy}" in capsys.readouterr().err
    copy.write_text(real.read_text())
    generate.main(["--check"])  # (other generated files are not this test's)
    assert str(copy) not in capsys.readouterr().err

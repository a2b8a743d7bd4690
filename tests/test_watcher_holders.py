"""A watch shared by clients is removed only by its last holder.

fs.watch of a directory already watched (the same path, recursive and exclude) answers the
same watch to every client that asks. Each asker's session holds it, and one client's
fs.unwatch lets go of its own hold only: another client that watched the same folder (a
second editor window, another extension) keeps its events. An fs.unwatch from a session
that holds nothing removes the watch for all, and says so. The holds are saved with the
watches, so a watcher killed and restarted keeps them; a watches file saved without holds
loads as held by no one.

Real watcher processes, real inotify, real signals; two sessions are two Client objects
(each its own session id). Nothing waits on a sleep: fs.sync answers once every earlier
change is published.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher import guarded, snapshot
from moorage.actors.watcher.state import tree_identity
from moorage.actors.watcher.watches import MAX_HOLDERS
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import wait_pid_exit
from tests.test_watcher import ENTRY, Watcher, kinds
from tests.waiting import gate_opened, open_gate, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def start(spawn_actor: Any, client: Client, data: Path) -> Callable[..., Watcher]:
    """A starter of watchers on `data` (state in the runtime dir, the same for each
    successor), answering the `client` fixture's session."""
    def go(**config: Any) -> Watcher:
        config.setdefault("roots", [str(data)])
        config.setdefault("settle_ms", 10)
        proc = spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return Watcher(proc, client, data)

    return go


@pytest.fixture
def sessions(runtime_dir: Path) -> Iterator[Callable[[], Client]]:
    """Clients of sessions of their own, each closed at the end however the test went."""
    made: list[Client] = []

    def new() -> Client:
        c = Client(runtime_dir, timeout=10.0)
        made.append(c)
        return c

    yield new
    for c in made:
        c.close()


def other(w: Watcher, c: Client) -> Watcher:
    """`c`'s view of the watcher `w` runs: its calls, and the fs.event stream it reads."""
    c.hello("watcher")
    return Watcher(w.proc, c, w.data)


def unwatch(w: Watcher, wid: str) -> dict[str, Any]:
    return w.call("fs.unwatch", {"watch": wid})


def watches(w: Watcher) -> list[dict[str, Any]]:
    return w.call("fs.stats")["watches"]


def created(w: Watcher, path: Path) -> bool:
    """`path` made now: is it published to `w`'s session (up to fs.sync's clock)?"""
    path.write_text("x")
    return ("created", os.path.relpath(path, w.data)) in kinds(w.sync(), w.data)


def not_found(w: Watcher, wid: str) -> str:
    with pytest.raises(MoorageError) as e:
        unwatch(w, wid)
    return e.value.name


def test_one_clients_unwatch_leaves_the_watch_to_the_other_and_the_last_removes_it(
        start, sessions, data):
    a = start()
    b = other(a, sessions())
    first = a.watch()
    second = b.watch()
    assert second["watch"] == first["watch"]  # one watch, shared
    wid = first["watch"]

    let_go = unwatch(a, wid)
    assert created(b, data / "after_a_let_go")  # b's events go on
    assert (first["holders"], second["holders"]) == (1, 2)
    assert let_go == {"removed": wid, "holders": 1, "held": True, "dropped": 0}
    assert [(x["id"], x["holders"]) for x in watches(b)] == [(wid, 1)]

    assert unwatch(b, wid) == {"removed": wid, "holders": 0, "held": True, "dropped": 0}
    assert watches(b) == []
    assert not created(b, data / "after_both_let_go")
    assert not_found(b, wid) == "watch_not_found"


def test_an_unwatch_from_a_session_that_holds_none_removes_the_watch_for_all_and_says_so(
        start, sessions, data):
    a = start()
    b = other(a, sessions())
    admin = other(a, sessions())  # (a CLI call from another process: a session of its own)
    wid = a.watch()["watch"]
    assert b.watch()["watch"] == wid

    assert unwatch(admin, wid) == {"removed": wid, "holders": 0, "held": False, "dropped": 2}
    assert watches(a) == []
    assert not created(b, data / "after_the_admin")
    assert not_found(a, wid) == "watch_not_found"


def test_a_watch_joined_while_it_is_placed_is_held_by_both(start, sessions, data, tmp_path,
                                                            monkeypatch):
    """The second fs.watch comes while the first one's inotify watch is being added (held
    at a FIFO): it joins that placement, and both sessions hold what it places."""
    held = data / "held"
    held.mkdir()
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    def hold_the_placement(path: bytes) -> None:  # (in the watcher: forked with it)
        if path.endswith(b"/held") and gate.exists():
            with open(gate, "rb") as f:
                f.read()
            gate.unlink()

    monkeypatch.setattr(guarded, "add_watch_fault", hold_the_placement)
    a = start()
    b = other(a, sessions())
    asker = sessions()  # (a's and b's clients wait for their answers on other threads)
    answers: dict[str, Any] = {}

    def watch(name: str, w: Watcher) -> None:
        try:
            answers[name] = w.call("fs.watch", {"path": str(held)}, timeout=60)
        except MoorageError as exc:
            answers[name] = exc

    threads = [threading.Thread(target=watch, args=("a", a))]
    try:
        threads[0].start()
        wait_for(lambda: asker.call("watcher", "fs.stats")["watches_placing"] == 1,
                 "a's watch being placed")
        threads.append(threading.Thread(target=watch, args=("b", b)))
        threads[1].start()
        wait_for(lambda: asker.call("watcher", "fs.stats")["watch_joins"] == 1,
                 "b's fs.watch joining the placement")
        open_gate(gate)
    finally:
        if gate.exists():
            gate_opened(gate)  # (a test failed before: the watcher's walker let go)
        for t in threads:
            t.join(90)
    assert answers["a"]["watch"] == answers["b"]["watch"], answers
    wid = answers["a"]["watch"]
    let_go = unwatch(a, wid)
    assert created(b, held / "after_a_let_go")
    assert (answers["a"]["holders"], answers["b"]["holders"]) == (2, 2)
    assert let_go["holders"] == 1


def test_the_configs_watch_is_held_by_the_config_too(start, sessions, data):
    """A client that watched what the config file watches and lets go leaves it watched;
    only a session that holds none of it removes it.

    The configured watch is placed by the start's walk, which may still run while the
    client watches and lets go (its fs.watch answers `via: "placing"`): a change made
    before that walk ends is covered by the start's fresh resync (the consumer lists), not
    told as an event. The change is made once that resync has ended, so its event comes
    only from the watch the config still holds."""
    a = start(watch=[str(data)])
    [configured] = watches(a)
    got = a.watch()
    assert got["watch"] == configured["id"]
    let_go = unwatch(a, got["watch"])
    a.resync("resync_end", "start")
    assert created(a, data / "still_watched")
    assert (configured["holders"], got["holders"], let_go["holders"]) == (1, 2, 1)
    admin = other(a, sessions())
    assert unwatch(admin, got["watch"]) == {"removed": got["watch"], "holders": 0,
                                            "held": False, "dropped": 1}


def test_the_holders_survive_a_watcher_killed_and_restarted(start, sessions, data,
                                                           runtime_dir):
    a = start()
    b_client = sessions()
    b = other(a, b_client)
    wid = a.watch()["watch"]
    assert b.watch()["watch"] == wid
    os.kill(a.proc.pid, signal.SIGKILL)
    assert wait_pid_exit(a.proc.pid, 10)

    a2 = start()  # (the same client, the same session as before the kill)
    b2 = other(a2, b_client)
    a2.sync()  # (the restart's resync out: what comes after it is an event)
    restored = watches(a2)
    let_go = unwatch(a2, wid)
    assert created(b2, data / "after_the_restart")
    assert [(x["id"], x["holders"]) for x in restored] == [(wid, 2)]
    assert let_go == {"removed": wid, "holders": 1, "held": True, "dropped": 0}
    assert unwatch(b2, wid)["holders"] == 0
    assert watches(a2) == []


def test_a_watches_file_saved_without_holders_loads_held_by_no_one(start, sessions, data,
                                                                  runtime_dir):
    """The watches file of a watcher that kept no holders: its watch is served, and any
    session's fs.unwatch removes it (it takes no one's hold away)."""
    state = runtime_dir / "watcher.state"
    state.mkdir(mode=0o700)
    snapshot.save(str(state / "watches.msgpack"), {
        "tree": tree_identity(runtime_dir), "next_id": 2,
        "watches": [{"id": "w1", "path": str(data), "recursive": True, "exclude": []}]})
    a = start()
    a.sync()
    assert [(x["id"], x["path"], x["holders"]) for x in watches(a)] == [("w1", str(data), 0)]
    assert created(a, data / "watched_as_saved")
    b = other(a, sessions())
    assert unwatch(b, "w1") == {"removed": "w1", "holders": 0, "held": False, "dropped": 0}
    assert watches(a) == []


def test_a_watch_keeps_at_most_max_holders_and_drops_the_oldest(start, sessions, data):
    """Clients that watch and die never let go: past MAX_HOLDERS the oldest hold goes, and
    that session's fs.unwatch is then one from a session that holds none."""
    a = start()
    wid = a.watch()["watch"]
    later = [other(a, sessions()) for _ in range(MAX_HOLDERS)]
    assert [w.watch()["holders"] for w in later][-2:] == [MAX_HOLDERS, MAX_HOLDERS]
    assert unwatch(later[0], wid) == {"removed": wid, "holders": MAX_HOLDERS - 1,
                                      "held": True, "dropped": 0}
    assert unwatch(a, wid) == {"removed": wid, "holders": 0, "held": False,
                               "dropped": MAX_HOLDERS - 1}

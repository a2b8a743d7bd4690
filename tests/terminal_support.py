"""Helpers for the terminal tests: a raw keeper link, a byte-exact output collector, and a
private HOME so the machine's own ~/.bashrc (pyenv, ...) neither slows nor changes a test."""

from __future__ import annotations

import array
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from moorage.actors.terminal.link import FrameReader, encode
from moorage.actors.terminal.ring import SessionRing
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client._streams import Loss, Reset
from moorage.protocol.envelope import StreamMessage, decode_stream
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for


def make_home(tmp: Path, bashrc: str = "", zshrc: str = "") -> Path:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".bashrc").write_text(bashrc)
    (home / ".zshrc").write_text(zshrc)
    return home


def send_message(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    """One link message on a blocking socket, `fds` passed with its first bytes."""
    data = encode(msg)
    if fds:
        n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   array.array("i", fds))])
        data = data[n:]
    sock.sendall(data)


class RawLink:
    """A blocking client of the keeper's socket, as the terminal actor would be."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = FrameReader()
        self.pending: list[dict[str, Any]] = []
        self.fds: list[int] = []  # passed to us, in order (a `fds` message takes two)
        self.rings: dict[str, SessionRing] = {}  # session -> its ring, mapped here
        self.masters: dict[str, int] = {}

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        send_message(self.sock, msg, fds)

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while not self.pending:
            left = end - time.monotonic()
            assert left > 0, "no message from the keeper in time"
            self.sock.settimeout(left)
            data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
            assert data, "keeper closed the connection"
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
                    self.fds.extend(fds)
            for msg in self.reader.feed(data):
                if msg["t"] == "fds":  # a session's master and ring: kept, mapped
                    master, ring = self.fds.pop(0), self.fds.pop(0)
                    self.masters[msg["s"]] = master
                    self.rings[msg["s"]] = SessionRing.open(ring)
                self.pending.append(msg)
        return self.pending.pop(0)

    def read_out(self, msg: dict[str, Any], seen: dict[str, bytearray],
                 ack: bool = True) -> None:
        """An `out` message: the new bytes of its session's ring into `seen`; with `ack`, say
        they were handled (the ring's ack_off) and wake the keeper if it paused."""
        sid = msg["s"]
        data = seen.setdefault(sid, bytearray())
        ring = self.rings[sid]
        data.extend(ring.read(len(data), msg["end"]))
        if ack:
            ring.ack_off = len(data)
            if msg.get("paused"):
                self.send({"t": "ack", "s": sid})

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
             on_other: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """The first message matching `pred`; the others go to `on_other`, or stay queued
        (in order) for the next `recv` when there is none."""
        end = time.monotonic() + timeout
        kept: list[dict[str, Any]] = []
        try:
            while True:
                msg = self.recv(max(0.001, end - time.monotonic()))
                if pred(msg):
                    return msg
                if on_other is not None:
                    on_other(msg)
                else:
                    kept.append(msg)
        finally:
            self.pending[:0] = kept

    def close(self) -> None:
        self.sock.close()
        for ring in self.rings.values():
            ring.close()
        for fd in self.masters.values():
            os.close(fd)
        self.rings.clear()
        self.masters.clear()


class Output:
    """A session's output stream as a subscriber sees it, put together by absolute offset:
    a repeated byte (a replayed chunk) must equal what was there; a gap fails the test."""

    def __init__(self, client: Client, sid: str, actor: str = "terminal") -> None:
        self.sub = client.subscribe(actor, [f"term.out.{sid}"], from_seq=1)
        self.data = bytearray()
        self.resets = 0
        self.losses: list[Loss] = []
        self.repeated = 0

    def _take(self, timeout: float) -> bool:
        ev = self.sub.next(timeout=timeout)
        if ev is None:
            return False
        if isinstance(ev, Reset):
            self.resets += 1
        elif isinstance(ev, Loss):
            self.losses.append(ev)
        elif isinstance(ev, StreamMessage):
            off = ev.body["offset"]
            chunk = b"".join(ev.attachments)
            have = len(self.data)
            assert off <= have, f"gap in the output: have {have} bytes, next chunk at {off}"
            overlap = min(have - off, len(chunk))
            assert self.data[off : off + overlap] == chunk[:overlap], "a repeat differs"
            self.repeated += overlap
            self.data += chunk[overlap:]
        return True

    def until(self, pred: Callable[[bytes], bool], timeout: float = 30.0) -> bytes:
        end = time.monotonic() + timeout
        while not pred(bytes(self.data)):
            left = end - time.monotonic()
            assert left > 0, f"output not as expected in time: {bytes(self.data[-300:])!r}"
            self._take(min(left, 1.0))
        return bytes(self.data)

    def close(self) -> None:
        self.sub.close()


ACK_EVERY = 256 << 10  # RawOutput acknowledges this often (a quarter of the keeper's window)


class RawOutput:
    """`term.out.<session>` read with a bare SUB socket and put together by offset alone,
    which is the stream's contract: a chunk may come twice (a restarted terminal actor
    republishes the tail of the session's ring), and around a restart the dead publisher's
    last messages and the new one's arrive interleaved (two connections, fair-queued). A
    repeat must equal what is there; what is ahead waits for the bytes before it. Every
    welcome (our subscription is live, maybe with a new publisher) is followed by a `replay`
    of what that publisher sent before it, from its retention, and so is a gap in a
    publisher's seqs (our queue overflowed). It acknowledges what it took (`term.ack`), so the
    session's shell never runs more than the keeper's window ahead of it.

    (The client's Subscription is not used here: its tracker mishandles that interleaving,
    and its 100,000-message receive queue keeps backpressure from engaging; see the
    report.)"""

    def __init__(self, client: Client, sid: str, actor: str = "terminal") -> None:
        self.client = client
        self.sid = sid
        self.actor = actor
        self.topic = f"term.out.{sid}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        _open_outputs.append(self)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 5)
        # A small queue: what overflows it is taken from retention (a gap in the seqs)
        self.sock.setsockopt(zmq.RCVHWM, 16)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        self.sock.connect(endpoints.pub(client.runtime_dir, actor))
        self.data = bytearray()
        self.ahead: dict[int, bytes] = {}
        self.epochs: list[str] = []
        self.last_seq: dict[str, int] = {}
        self.welcomes = 0
        self.repeated = 0
        self.lost: list[tuple[str, list[int]]] = []  # seq ranges retention no longer had
        self.acked = 0
        self.gaps = 0

    def _add(self, off: int, chunk: bytes) -> None:
        have = len(self.data)
        if off > have:
            if len(chunk) > len(self.ahead.get(off, b"")):
                self.ahead[off] = chunk
            return
        overlap = min(have - off, len(chunk))
        assert self.data[off : off + overlap] == chunk[:overlap], "a repeat differs"
        self.repeated += overlap
        self.data += chunk[overlap:]
        while self.ahead:
            ready = [o for o in self.ahead if o <= len(self.data)]
            if not ready:
                return
            o = min(ready)
            self._add(o, self.ahead.pop(o))

    def _message(self, epoch: str, seq: int, body: dict, chunk: bytes,
                 replayed: bool = False) -> None:
        if not self.epochs or self.epochs[-1] != epoch:
            self.epochs.append(epoch)
        last = self.last_seq.get(epoch)
        if last is not None and seq > last + 1 and not replayed:
            # our queue overflowed: take it from retention (which reports what it lost)
            self.gaps += 1
            self._replay(epoch)
        self.last_seq[epoch] = max(seq, self.last_seq.get(epoch, 0))
        self._add(body["offset"], chunk)
        if len(self.data) - self.acked >= ACK_EVERY:
            self.acked = len(self.data)
            self.client.call(self.actor, "term.ack", {"session": self.sid,
                                                      "offset": self.acked})

    def _replay(self, epoch: str) -> None:
        frm = self.last_seq.get(epoch, 0) + 1
        while True:
            reply = self.client.request(self.actor, "replay", {"topic": self.topic,
                                                               "from_seq": frm})
            body = reply.body
            if body["epoch"] != epoch:
                return  # yet another publisher: its own welcome will follow
            if body["lost"]:
                self.lost.append((epoch, body["lost"]))
            i = 0
            for seq, mbody, n in body["messages"]:
                self._message(epoch, seq, mbody, b"".join(reply.attachments[i : i + n]),
                              replayed=True)
                i += n
                frm = seq + 1
            if not body["more"]:
                return

    def _take(self, timeout: float) -> None:
        if not self.sock.poll(int(timeout * 1000)):
            return
        msg = decode_stream(self.sock.recv_multipart())
        if msg.welcome:
            self.welcomes += 1
            self._replay(msg.epoch)
            return
        self._message(msg.epoch, msg.seq, msg.body, b"".join(msg.attachments))

    def wait_live(self, timeout: float = 10.0) -> None:
        """Until our subscription is live (the publisher's welcome came)."""
        end = time.monotonic() + timeout
        while not self.welcomes:
            left = end - time.monotonic()
            assert left > 0, "no welcome from the publisher"
            self._take(min(left, 1.0))

    def until(self, pred: Callable[[bytes], bool], timeout: float = 30.0) -> bytes:
        end = time.monotonic() + timeout
        while not pred(bytes(self.data)):
            left = end - time.monotonic()
            assert left > 0, (f"output not as expected in time: {bytes(self.data[-300:])!r}; "
                              f"epochs {self.epochs}, ahead {sorted(self.ahead)[:5]}, "
                              f"lost {self.lost}")
            self._take(min(left, 1.0))
        return bytes(self.data)

    def close(self) -> None:
        if self.sock.closed:
            return
        self.sock.close(0)
        self.ctx.term()


_open_outputs: list[RawOutput] = []


def close_left_open() -> None:
    """The RawOutputs a failed test did not get to close (conftest runs this after each
    test): their sockets and contexts would otherwise be collected during another test."""
    while _open_outputs:
        _open_outputs.pop().close()


class Commands:
    """`term.cmd.<session>` records, in order."""

    def __init__(self, client: Client, sid: str) -> None:
        self.sub = client.subscribe("terminal", [f"term.cmd.{sid}"], from_seq=1)

    def next_event(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0, f"no {event} record in time"
            ev = self.sub.next(timeout=left)
            if isinstance(ev, StreamMessage) and ev.body.get("event") == event:
                return ev.body

    def close(self) -> None:
        self.sub.close()


def env_for(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PATH": os.environ.get("PATH", os.defpath)}


# The default tree's terminals supervisor (the keeper first), its terminal's table last open:
# a test tree's lines for [actor.terminal] follow it.
TERMINALS = """[[children]]
id = "terminals"
type = "supervisor"
strategy = "one_for_one"

[[children.children]]
id = "ptykeeper"
start = "moorage.actors.terminal.keeper.actor:PtyKeeper"
shutdown_ms = 5000

[[children.children]]
id = "terminal"
start = "moorage.actors.terminal.actor:TerminalActor"
shutdown_ms = 3000

[actor.terminal]
shells = ["bash"]
"""


def terminal_tree(terminal: str = "", parser: str = "") -> str:
    """The default tree's terminal part (metrics, parser, and the terminals supervisor with
    the keeper first), with test heartbeats; `parser` lines go into the parser's child table,
    `terminal` lines into [actor.terminal] after its bash-only shell list."""
    return f"""
[supervisor]
heartbeat = {{ interval_ms = 200, misses = 5 }}
backoff = {{ initial_ms = 20, factor = 2.0, max_ms = 400 }}

[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"

[[children]]
id = "parser"
start = "moorage.actors.parser.actor:ParserActor"
{parser}

{TERMINALS}{terminal}
"""


def a_session_in_custody(c: Client, tmp_path: Path) -> dict[str, Any]:
    """A bash session (term.create's answer), its PTY held by the supervisor's custody too."""
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
               timeout=30)
    wait_for(lambda: c.call("terminals", "sys.info")["custody"]["held"] == {"ptykeeper": 1},
             "the session in the supervisor's custody")
    return s


def welcomed_by_another_keeper(c: Client, old_keeper: int) -> bool:
    """The terminal is connected to a keeper other than `old_keeper`."""
    info = c.call("terminal", "sys.info")
    return bool(info["keeper_connected"]) and info["keeper_pid"] not in (None, old_keeper)


def hang_keeper(tree: Any) -> int:
    """SIGSTOP the keeper (its supervisor kills it as hung within a second or so); its pid."""
    keeper = tree.child("ptykeeper")["pid"]
    os.kill(keeper, signal.SIGSTOP)
    return keeper


class ListedSession:
    """One session of a tree, driven through its client, and what term.list says of it."""

    def __init__(self, client: Client, sid: str) -> None:
        self.client = client
        self.sid = sid

    def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        return self.client.call("terminal", op, {"session": self.sid, **args},
                                timeout=timeout)

    def listed(self) -> dict[str, Any]:
        return next(s for s in self.client.call("terminal", "term.list")["sessions"]
                    if s["session"] == self.sid)

    def where(self) -> tuple[str, bool, str]:
        s = self.listed()
        return s["state"], s["busy"], s["mode"]

    def exec(self, command: str, timeout_ms: int = 20_000) -> dict[str, Any]:
        return self.call("term.exec", {"command": command, "timeout_ms": timeout_ms},
                         timeout=timeout_ms / 1000 + 10)

    def refused(self, command: str, timeout_ms: int = 20_000) -> MoorageError:
        """The error a term.exec of `command` ends with (it must end with one)."""
        try:
            self.exec(command, timeout_ms)
        except MoorageError as exc:
            return exc
        raise AssertionError(f"term.exec {command!r} was not refused")

    def type(self, line: str) -> None:
        self.call("term.write", {"data": line + "\r"})

    def scrollback(self) -> bytes:
        return self.client.request("terminal", "term.scrollback",
                                   {"session": self.sid}).attachments[0]

    def shown(self, text: bytes) -> bool:
        return text in self.scrollback()


def integrated_session(tree: Any, tmp_path: Path, shell: str) -> ListedSession:
    """A new session of `shell` on `tree`, its integration marking and its first prompt drawn."""
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": shell,
                                             "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    s = ListedSession(c, sid)
    wait_for(lambda: s.where() == ("prompt", False, "integration"),
             "the session's integration and its first prompt")
    return s

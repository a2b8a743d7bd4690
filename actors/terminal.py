"""The terminal actor: PTY sessions with shell integration; the shells live in the pty keeper.

  op               args                                 reply                      errors
  term.create      {shell?, args?, cwd?, env?, cols?,   {session, pid, tty, shell, bad_args,
                    rows?, integration?}                 kind, mode, attempts}      pty_failed
  term.exec        {session, command, timeout_ms?}      {session, exit_code,       not_found*,
                                                         output, cwd, duration_ms,  session_busy,
                                                         mode, trusted}             shell_exited,
                                                                                    timeout,
                                                                                    outcome_unknown
  term.write       {session, data: str|bin}             {queued}                   not_found*,
                                                                                    shell_exited,
                                                                                    busy
  term.resize      {session, cols, rows}                {cols, rows}               not_found*
  term.signal      {session, signal?: "SIGINT",         {pgid, signal}             not_found*,
                    target?: foreground|shell}                                      shell_exited,
                                                                                    bad_args
  term.close       {session}                            {closed}                   not_found*
  term.list        {}                                   {sessions, keeper}         -
  term.scrollback  {session, from_offset?, max_bytes?}  {session, from, to,        not_found*
                                                         first, end, lost?} and
                                                         the bytes (attachment)
not_found* is session_not_found. Every op that needs the keeper waits for it (up to
`keeper_wait_ms`), then answers `unavailable`. `mode` is the fallback step that served:
integration, no_integration, raw_output (actors/termsession.py); `attempts` lists the shells
tried before the one that ran.

Streams: `term.out.<session>` body {offset, replay?} with the raw bytes as an attachment;
offsets continue across restarts of this actor, and a chunk marked `replay` may repeat bytes a
subscriber has (drop them by offset). `term.cmd.<session>` {event: start|end, command, cwd,
exit_code, offsets, times}. `term.session` {session, event: exited|lost|recreated|gone, ...}.
`term.alert` {kind: "sessions_lost", sessions, ...} when the keeper died with sessions.

The keeper (actors/ptykeeper.py) holds the shells and the unacknowledged output; this actor
acknowledges a chunk once it is published, and not while the publisher has a backlog (a slow
subscriber, XPUB_NODROP): the keeper's window fills, it stops reading, the shell blocks.
Creation walks the shells (seed 2.2): the one asked for, the configured ones (`shells`,
default $SHELL), `default_shell` (/bin/sh), then a minimal PTY (/bin/sh, bare environment, no
integration). A shell that exits before its first prompt counts as failed. Sessions are
recorded in `<runtime_dir>/<name>.sessions`, so that a successor can tell that the keeper lost
them, alert, and start each once more (seed 1.2: Terminal Critical, recreate, alert, 1 retry).
Parsing is in-process (vtparse, the parser actor's "local mode"); the parser actor hop is not
wired yet.

Config: keeper ("ptykeeper"), shells, default_shell, term, integration_detect_ms (5000),
quiet_ms (300), exec_timeout_ms (60000), scrollback_bytes (2 MiB), max_output_bytes (1 MiB),
keeper_wait_ms (3000), idle_close_s (600), ack_bytes (256 KiB), resume_wait_ms (5000),
pub_hwm (8: bounds what a crash can lose in flight, see PtyKeeper keep_bytes),
retention_messages (2000) and retention_bytes (8 MiB) per topic, reply_cache_entries (1024).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from actors.ptylink import Link
from actors.runtime import DEFERRED, Actor, Attached, Call, op
from actors.runtime.loop import Timer
from actors.terminal_restore import Creation, reconcile
from actors.termsession import Session
from protocol.errors import KINDS, Category, MoorageError, WireError, fail

KeeperCallback = Callable[[dict[str, Any] | None, WireError | None], None]
RECONNECT_S = 0.1
ACK_DELAY_S = 0.005
TICK_S = 0.02  # resolution of exec timeouts, integration detection and quiet detection


class SpecStore:
    """What each session was created from, on disk, for a successor (msgpack, 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.specs: dict[str, dict[str, Any]] = {}
        try:
            loaded = msgpack.unpackb(path.read_bytes())
            if isinstance(loaded, dict):
                self.specs = loaded
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("session records {} unreadable, ignored: {}", path, exc)

    def put(self, sid: str, spec: dict[str, Any]) -> None:
        self.specs[sid] = spec
        self._save()

    def drop(self, sid: str) -> None:
        if self.specs.pop(sid, None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgpack.packb(self.specs, use_bin_type=True))
        os.replace(tmp, self.path)


def parse_signal(value: str | int) -> int:
    if isinstance(value, int):
        if value in {s.value for s in signal.Signals}:
            return value
        raise fail("bad_args", f"no signal number {value}")
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return signal.Signals[name].value
    except KeyError:
        raise fail("bad_args", f"no signal named {value!r}") from None


class TerminalActor(Actor):
    name = "terminal"
    category = Category.TERMINAL
    nodrop = True  # a slow subscriber is backpressure (see the module docstring), not a gap

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        config = dict(config or {})
        config.setdefault("pub_hwm", 8)
        # per topic, and there are two per session: output is bounded by bytes, records by
        # count (the runtime's 10,000 would hold 10,000 records of `echo test` per session)
        config.setdefault("retention_messages", 2000)
        config.setdefault("retention_bytes", 8 * 1024 * 1024)
        config.setdefault("reply_cache_entries", 1024)
        super().__init__(name, runtime_dir, config)
        cfg = self.config
        self.keeper_path = self.runtime_dir / f"{cfg.get('keeper', 'ptykeeper')}.sock"
        self.shells: list[str] = list(cfg.get("shells") or [os.environ.get("SHELL") or "bash"])
        self.default_shell = str(cfg.get("default_shell", "/bin/sh"))
        self.term = str(cfg.get("term", "xterm-256color"))
        self.detect_s = int(cfg.get("integration_detect_ms", 5000)) / 1000
        self.quiet_s = int(cfg.get("quiet_ms", 300)) / 1000
        self.exec_timeout_ms = int(cfg.get("exec_timeout_ms", 60_000))
        self.scrollback_bytes = int(cfg.get("scrollback_bytes", 2 << 20))
        self.max_output = int(cfg.get("max_output_bytes", 1 << 20))
        self.keeper_wait_s = int(cfg.get("keeper_wait_ms", 3000)) / 1000
        self.idle_close_s = float(cfg.get("idle_close_s", 600))
        self.sessions: dict[str, Session] = {}
        self.specs = SpecStore(self.runtime_dir / f"{self.name}.sessions")
        self.link: Link | None = None
        self.welcomed = False
        self.keeper_pid: int | None = None
        self._waiting: dict[int, KeeperCallback] = {}
        self._next_r = 1
        self._ack_due: set[Session] = set()
        self._ack_timer: Timer | None = None
        self._ticking: set[Session] = set()
        self._tick_timer: Timer | None = None
        self.ack_bytes = int(cfg.get("ack_bytes", 256 << 10))  # keeper window / 4
        # After a restart no subscriber is back yet, and without subscribers there is no
        # backpressure: a session whose output was watched (the keeper keeps that in its
        # meta) holds its acks until a subscriber is back, at most resume_wait_ms, so the
        # keeper's window, not the shell's speed, bounds what is published meanwhile.
        self.resume_wait_s = int(cfg.get("resume_wait_ms", 5000)) / 1000
        self.subscribed: set[str] = set()  # topic prefixes subscribers asked for, ever
        welcome = self.publisher.welcome

        def on_subscribe(topic: str) -> None:
            welcome(topic)
            self._subscribed(topic)

        # The runtime has no hook for "a subscriber arrived"; its welcome is the moment.
        self.publisher.welcome = on_subscribe  # type: ignore[method-assign]
        self._until_ready: list[Callable[[bool], None]] = []
        self._ready_callback: Callable[[], None] | None = None
        self._keeper = {"welcome": self._k_welcome, "out": self._k_out, "exit": self._k_exit,
                        "ok": self._k_reply, "err": self._k_reply}

    # --- life -------------------------------------------------------------------------------

    def on_start(self) -> None:
        # Ready (for the supervisor) once the keeper has told us its sessions, or after
        # keeper_wait_ms without it (then ops wait or answer `unavailable`).
        self._ready_callback, self.ready_hook = self.ready_hook, None
        self.loop.call_later(self.keeper_wait_s, self._announce_ready)
        self._connect()

    def _announce_ready(self) -> None:
        if self._ready_callback is not None:
            cb, self._ready_callback = self._ready_callback, None
            cb()

    def on_stop(self) -> None:
        for s in self.sessions.values():
            s.abort(WireError.of("outcome_unknown", f"{self.name} stopped while it ran"))
        if self.link is not None:
            self.link.close("terminal stopping")

    def info(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "keeper_connected": self.welcomed,
                "keeper_pid": self.keeper_pid, "pub_backlog": len(self.publisher.backlog)}

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        done: dict[str, Any] = {}
        if level in ("moderate", "high", "critical"):
            keep = self.scrollback_bytes // (2 if level == "moderate" else 8)
            done["scrollback_trimmed"] = sum(s.scroll.trim(keep) for s in self.sessions.values())
        if level == "critical":
            now = time.monotonic()
            idle = [s.id for s in self.sessions.values() if s.exec is None
                    and s.state != "running" and now - s.last_use > self.idle_close_s]
            for sid in idle:
                self._close_session(sid)
            done["idle_sessions_closed"] = idle
        done["integration"] = self.integration_allowed()
        return done

    def integration_allowed(self) -> bool:
        """Quality 1 and 0 turn shell integration off (seed 9.2)."""
        return self.quality > 1

    # --- the keeper link ---------------------------------------------------------------------

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.keeper_path))  # a Unix connect: at once or refused
        except OSError as exc:
            sock.close()
            logger.debug("keeper not reachable at {}: {}", self.keeper_path, exc)
            self.loop.call_later(RECONNECT_S, self._connect)
            return
        self.link = Link(self.loop, sock, self._on_keeper, self._on_link_closed,
                         on_batch_end=self._flush_acks)
        self.link.send({"t": "hello"})

    def _on_link_closed(self, reason: str) -> None:
        logger.warning("keeper link closed: {}", reason)
        self.link = None
        self.welcomed = False
        waiting, self._waiting = self._waiting, {}
        for cb in waiting.values():
            cb(None, WireError.of("outcome_unknown", f"pty keeper connection lost ({reason})"))
        for s in self.sessions.values():
            s.abort(WireError.of("outcome_unknown", f"pty keeper connection lost ({reason})"))
        self._ack_due.clear()
        for s in self.sessions.values():
            s.acked = 0  # the next welcome says what the keeper has
        if not self._stopping:
            self.loop.call_later(RECONNECT_S, self._connect)

    def _on_keeper(self, msg: dict[str, Any]) -> None:
        handler = self._keeper.get(msg["t"])
        if handler is None:
            logger.warning("keeper sent an unknown message {!r}", msg["t"])
            return
        handler(msg)

    def keeper_request(self, msg: dict[str, Any], cb: KeeperCallback) -> None:
        if self.link is None or not self.welcomed:
            cb(None, WireError.of("unavailable", "the pty keeper is not connected"))
            return
        r = self._next_r
        self._next_r += 1
        msg["r"] = r
        self._waiting[r] = cb
        self.link.send(msg)

    def keeper_write(self, s: Session, data: bytes) -> bool:
        """Input for a command: no reply unless the keeper refuses it (then the session's
        `write_failed`). False: no keeper, nothing was sent."""
        if self.link is None or not self.welcomed:
            return False
        self.link.send({"t": "write", "s": s.id, "data": data})
        return True

    def keeper_signal(self, s: Session, sig: str, to: str) -> None:
        self.keeper_request({"t": "signal", "s": s.id, "sig": parse_signal(sig), "to": to},
                            lambda _r, err: err is None or logger.info(
                                "session {}: signal not sent: {}", s.id, err.message))

    def keeper_meta(self, s: Session) -> None:
        if self.link is not None:
            self.link.send({"t": "meta", "s": s.id, "meta": s.meta})

    def _k_reply(self, msg: dict[str, Any]) -> None:
        cb = self._waiting.pop(msg.get("r"), None)  # type: ignore[arg-type]
        err = None
        if msg["t"] == "err":
            name = msg.get("name") if msg.get("name") in KINDS else "internal"
            err = WireError.of(name, str(msg.get("message", "")),
                               detail={"errno": msg["errno"]} if "errno" in msg else None)
        if cb is not None:
            cb(None, err) if err is not None else cb(msg, None)
        elif err is not None:
            s = self.sessions.get(msg.get("s"))  # type: ignore[arg-type]
            if msg.get("what") == "write" and s is not None:
                s.write_failed(err)
            else:
                logger.warning("keeper: {}", err.message)

    def _k_welcome(self, msg: dict[str, Any]) -> None:
        self.keeper_pid = msg.get("pid")
        self.welcomed = True
        reconcile(self, msg.get("sessions", []))
        self._announce_ready()
        waiting, self._until_ready = self._until_ready, []
        for fn in waiting:
            fn(True)

    def _k_out(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None:
            s.on_output(int(msg["off"]), msg["data"])
            self._ack_due.add(s)

    def _k_exit(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is None or s.exited is not None:
            return
        info = {"code": msg.get("code"), "signal": msg.get("signal")}
        s.on_exit(info)
        self.publisher.publish("term.session", {"session": s.id, "event": "exited", **info})

    def _flush_acks(self, now: bool = False) -> None:
        """Acknowledge what is published; nothing while the publisher has a backlog.

        An ack is not on any command's path, and each one wakes the keeper: small amounts
        are acked together `ACK_DELAY_S` later, a quarter window's worth at once."""
        if not self._ack_due or self.link is None or self.publisher.backlog:
            return
        if not now and all(s.offset - s.acked < self.ack_bytes for s in self._ack_due):
            if self._ack_timer is None:
                self._ack_timer = self.loop.call_later(ACK_DELAY_S, self._ack_later)
            return
        for s in [s for s in self._ack_due if not s.hold_acks]:
            self.link.send({"t": "ack", "s": s.id, "off": s.offset})
            s.acked = s.offset
            self._ack_due.discard(s)

    def _ack_later(self) -> None:
        self._ack_timer = None
        self._flush_acks(now=True)

    def _want_pub_writable(self, on: bool) -> None:
        super()._want_pub_writable(on)
        if not on:  # the backlog has drained: the acks held back can go
            self._flush_acks(now=True)

    def _subscribed(self, topic: str) -> None:
        """A subscription to `topic` (a prefix): the sessions whose output it covers are
        watched, and those waiting for their subscribers after a restart may go on."""
        self.subscribed.add(topic)
        for s in self.sessions.values():
            if f"term.out.{s.id}".startswith(topic):
                self.watched(s)

    def watched(self, s: Session) -> None:
        if not s.meta.get("watched"):
            s.meta["watched"] = True
            self.keeper_meta(s)
        if s.hold_acks:
            s.hold_acks = False
            self._flush_acks(now=True)

    def hold_until_watched(self, s: Session) -> None:
        """After a restart: no acks for `s` until its output has a subscriber again."""
        if any(f"term.out.{s.id}".startswith(t) for t in self.subscribed):
            return
        s.hold_acks = True

        def give_up() -> None:
            if s.hold_acks:
                logger.warning("session {}: no subscriber back in {} s; output goes on",
                               s.id, self.resume_wait_s)
                s.hold_acks = False
                self._flush_acks(now=True)

        self.loop.call_later(self.resume_wait_s, give_up)

    # --- used by sessions ----------------------------------------------------------------------

    def need_tick(self, s: Session) -> None:
        self._ticking.add(s)
        if self._tick_timer is None:
            self._tick_timer = self.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self._tick_timer = None
        now = time.monotonic()
        for s in list(self._ticking):
            if not s.tick(now):
                self._ticking.discard(s)
        if self._ticking:
            self._tick_timer = self.loop.call_later(TICK_S, self._tick)

    def publish_output(self, s: Session, off: int, data: bytes, replay: bool) -> None:
        body: dict[str, Any] = {"offset": off}
        if replay:
            body["replay"] = True
        self.publisher.publish(f"term.out.{s.id}", body, [data])

    def publish_command(self, s: Session, body: dict[str, Any]) -> None:
        if self.quality >= 3:  # command records are the first feature to go (seed 9.2)
            self.publisher.publish(f"term.cmd.{s.id}", {"session": s.id, **body})

    # --- helpers for ops ---------------------------------------------------------------------

    def _when_ready(self, call: Call, fn: Callable[[], Any]) -> Any:
        """Run `fn` now if the keeper is connected, else when it is (or fail `unavailable`)."""
        if self.welcomed:
            return fn()

        def later(ok: bool) -> None:
            if call.answered:
                return
            if not ok:
                call.fail(WireError.of("unavailable", "the pty keeper is not connected"))
                return
            try:
                result = fn()
            except MoorageError as exc:
                call.fail(exc)
                return
            if result is not DEFERRED:
                call.reply(result)

        self._until_ready.append(later)

        def give_up() -> None:
            if later in self._until_ready:
                self._until_ready.remove(later)
                later(False)

        self.loop.call_later(self.keeper_wait_s, give_up)
        return DEFERRED

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise fail("session_not_found", f"no session {sid!r}")
        return s

    def base_env(self, env: dict[str, Any] | None) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_NONCE")}
        out["TERM"] = self.term
        for k, v in (env or {}).items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise fail("bad_args", f"env: bad variable name {k!r}")
            if v is None:
                out.pop(k, None)
            elif isinstance(v, str) and "\0" not in v:
                out[k] = v
            else:
                raise fail("bad_args", f"env: {k} must be a string without NUL, or nil")
        return out

    def candidates(self, shell: str | None) -> list[tuple[str, str | None]]:
        """(name asked for, resolved path or None) in the order of seed 2.2."""
        names = ([shell] if shell else []) + self.shells + [self.default_shell]
        out: list[tuple[str, str | None]] = []
        seen: set[str] = set()
        for name in names:
            path = shutil.which(name)
            key = path or name
            if key not in seen:
                seen.add(key)
                out.append((name, path))
        return out

    def _close_session(self, sid: str) -> None:
        s = self.sessions.pop(sid, None)
        self.specs.drop(sid)
        self._ack_due.discard(s)  # type: ignore[arg-type]
        if s is not None:
            s.abort(WireError.of("shell_exited", f"session {sid} was closed"))
        self.keeper_request({"t": "close", "s": sid}, lambda _r, _e: None)

    # --- ops ----------------------------------------------------------------------------------

    @op("term.create", args={"shell": (str, None), "args": (list, None), "cwd": (str, None),
                             "env": (dict, None), "cols": (int, 80), "rows": (int, 24),
                             "integration": (bool, True)}, timeout_ms=30_000)
    def _op_create(self, call: Call, shell: str | None, args: list | None, cwd: str | None,
                   env: dict | None, cols: int, rows: int, integration: bool) -> Any:
        """Start a shell on a new PTY (walking the fallback shells); answers at its prompt."""
        if not (1 <= cols <= 10_000 and 1 <= rows <= 10_000):
            raise fail("bad_args", "cols and rows must be 1..10000")
        if args is not None and not all(isinstance(a, str) and "\0" not in a for a in args):
            raise fail("bad_args", "args must be strings without NUL")
        if cwd is not None and not os.path.isdir(cwd):
            raise fail("bad_args", f"cwd {cwd!r} is not a directory")
        spec = {"shell": shell, "args": args or [], "cwd": cwd, "env": env or {},
                "cols": cols, "rows": rows, "integration": integration, "recreated": 0}
        self.base_env(env)  # validate now, not half way through the chain

        def start() -> Any:
            Creation(self, "t" + secrets.token_hex(6), spec, call).next()
            return DEFERRED

        return self._when_ready(call, start)

    @op("term.exec", args={"session": str, "command": str, "timeout_ms": (int, None)},
        timeout_ms=24 * 3600 * 1000)
    def _op_exec(self, call: Call, session: str, command: str, timeout_ms: int | None) -> Any:
        """Run a command line in a session; answers when it finished (see the modes)."""
        if "\0" in command:
            raise fail("bad_args", "command contains NUL")
        limit = self.exec_timeout_ms if timeout_ms is None else timeout_ms
        if limit <= 0:
            raise fail("bad_args", "timeout_ms must be > 0")
        left = call.remaining_ms()
        if left is not None:
            limit = min(limit, left - 100)  # our timeout error, before the caller's deadline
            if limit <= 0:
                raise fail("deadline_expired", "no time left to run the command")

        def run() -> Any:
            s = self.session(session)
            if s.exited is not None:
                raise fail("shell_exited", f"session {session}'s shell has exited")
            reason = s.busy_reason()
            if reason:
                raise fail("session_busy", f"session {session}: {reason}")
            s.start_exec(call, command, limit / 1000)
            return DEFERRED

        return self._when_ready(call, run)

    @op("term.write", args={"session": str, "data": (str, bytes)}, timeout_ms=10_000)
    def _op_write(self, call: Call, session: str, data: str | bytes) -> Any:
        """Type into a session (keystrokes, a paste); queued without blocking."""
        raw = data.encode() if isinstance(data, str) else data

        def run() -> Any:
            s = self.session(session)
            s.last_use = time.monotonic()

            def done(_r: dict | None, err: WireError | None) -> None:
                call.fail(err) if err is not None else call.reply({"queued": len(raw)})

            self.keeper_request({"t": "write", "s": s.id, "data": raw}, done)
            return DEFERRED

        return self._when_ready(call, run)

    @op("term.resize", args={"session": str, "cols": int, "rows": int})
    def _op_resize(self, call: Call, session: str, cols: int, rows: int) -> Any:
        """Set the window size (the foreground job gets SIGWINCH)."""
        if not (1 <= cols <= 10_000 and 1 <= rows <= 10_000):
            raise fail("bad_args", "cols and rows must be 1..10000")

        def run() -> Any:
            s = self.session(session)

            def done(_r: dict | None, err: WireError | None) -> None:
                if err is not None:
                    call.fail(err)
                    return
                s.cols, s.rows = cols, rows
                call.reply({"cols": cols, "rows": rows})

            self.keeper_request({"t": "resize", "s": s.id, "cols": cols, "rows": rows}, done)
            return DEFERRED

        return self._when_ready(call, run)

    @op("term.signal", args={"session": str, "signal": ((str, int), "SIGINT"),
                             "target": (str, "foreground")})
    def _op_signal(self, call: Call, session: str, signal: str | int, target: str) -> Any:
        """Signal the session's foreground process group (or the shell's)."""
        if target not in ("foreground", "shell"):
            raise fail("bad_args", "target must be 'foreground' or 'shell'")
        sig = parse_signal(signal)

        def run() -> Any:
            s = self.session(session)

            def done(r: dict | None, err: WireError | None) -> None:
                if err is not None:
                    call.fail(err)
                else:
                    assert r is not None
                    call.reply({"pgid": r["pgid"], "signal": sig})

            self.keeper_request({"t": "signal", "s": s.id, "sig": sig,
                                 "to": "fg" if target == "foreground" else "shell"}, done)
            return DEFERRED

        return self._when_ready(call, run)

    @op("term.close", args={"session": str})
    def _op_close(self, call: Call, session: str) -> Any:
        """End a session: its shell and jobs are hung up."""
        def run() -> Any:
            self.session(session)
            self._close_session(session)
            return {"closed": session}

        return self._when_ready(call, run)

    @op("term.list", idempotent=True)
    def _op_list(self, call: Call) -> dict[str, Any]:
        """Every session with its state, mode, cwd and output offset."""
        return {"sessions": [s.describe() for s in self.sessions.values()],
                "keeper": {"connected": self.welcomed, "pid": self.keeper_pid}}

    @op("term.scrollback", args={"session": str, "from_offset": (int, None),
                                 "max_bytes": (int, 1 << 20)}, idempotent=True)
    def _op_scrollback(self, call: Call, session: str, from_offset: int | None,
                       max_bytes: int) -> Attached:
        """Raw output from an absolute offset (default: the last `max_bytes`)."""
        if max_bytes < 1 or (from_offset is not None and from_offset < 0):
            raise fail("bad_args", "max_bytes must be >= 1 and from_offset >= 0")
        s = self.session(session)
        sb = s.scroll
        start = max(sb.base, sb.end - max_bytes) if from_offset is None else from_offset
        first = max(start, sb.base)
        data = sb.get(first, min(sb.end, first + max_bytes))
        body: dict[str, Any] = {"session": session, "from": first, "to": first + len(data),
                                "first": sb.base, "end": sb.end}
        if start < sb.base:
            body["lost"] = [start, sb.base]
        return Attached(body, [data])

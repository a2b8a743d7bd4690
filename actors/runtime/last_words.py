"""Last words: what a hung actor's loop was doing when its supervisor killed it, so that its
successor does not run the same request again.

A request whose handler holds the loop past the hung threshold gets the actor SIGKILLed and
restarted (moorage.supervisor.supervisor: beats). The client then resends an idempotent call
that was in flight to the successor, which runs it and is killed again, and again, as long as
the call's deadline lasts: one hostile request (a path that takes seconds to resolve, a
pattern that takes seconds to compile) is a crash loop, and since each kill comes after the
actor had served for a while, none counts against the restart intensity and no fallback
engages. So the dying actor names the request, and its successor refuses it:

  the runtime  keeps the request its loop is handling in `Actor.current`: set before the
               handler runs, cleared after (one store each; a DEFERRED op's later work, on
               timers and events, is not covered, only the synchronous part)
  supervisor   before it SIGKILLs a child as hung, sends it LAST_WORDS_SIGNAL and waits for
               its record, ASK_S at most, polling every POLL_S; not at all when the child is
               stopped (SIGSTOP: it could not answer) or does not catch the signal (its
               default action would end it first, under another name than SIGKILL). The
               `hung` event and log line name the op, the client (`sid`) and how long it ran
  the actor    (`speak`, its Python signal handler) writes the record, atomically, to
               `<runtime dir>/succession/<name>.last_words`, then logs the stack. A handler
               runs between bytecodes on the main thread, so it runs when the loop is stuck
               in Python code; stuck in a C call that holds the GIL it does not, and then the
               kill comes ASK_S later and nothing else changes
  successor    (`take`, at start, before its socket is bound) reads and removes the record,
               and refuses a request with one of its (sid, id) `internal` (not retryable: the
               client gives up at once; `outcome_unknown` for an op that is not idempotent,
               a resumable one, whose effect may have happened), detail {op, ran_ms}, until
               the request's deadline (KEEP_MAX_MS at most); not cached, and nothing runs

The record (JSON): {actor, pid, time, request: {sid, id, op, ran_ms, keep_until_ms} or null,
stack: str, poisoned: [entries]}. `poisoned` is what the successor refuses: this request and
those its own predecessors named that are still within their deadlines (a successor killed
by a second hostile request must not forget the first), the latest MAX_ENTRIES. The record
lives in the succession dir (statefile.succession_dir): removed with the tree, so a new tree
starts with none.

Only the exact (sid, id) is refused: a new call with the same arguments runs (and, if it
hangs the loop again, is refused after its own one kill). Telling which arguments are
hostile is the op's own job (bounds on its input); this only stops the retries of one call
from turning one hang into a crash loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from loguru import logger

from moorage.actors.runtime.loop import Loop
from moorage.actors.runtime.statefile import SUCCESSION, succession_dir, write_atomic
from moorage.protocol.errors import Category, WireError

# The runtime's own signals are SIGTERM, SIGINT, SIGHUP (stop), SIGCHLD and SIGCONT (the
# supervisor's), SIGRTMIN+2 (a zygote's child: its parent died): SIGUSR2 is free. What an
# actor execs (a session's shell) starts with the default disposition again.
LAST_WORDS_SIGNAL = signal.SIGUSR2
ASK_S = 0.2  # the longest a supervisor waits for a hung child's record before its SIGKILL
POLL_S = 0.01  # how often it looks for the record meanwhile
KEEP_MAX_MS = 600_000  # a request refused for its deadline, but not longer than this
MAX_ENTRIES = 8  # requests a record carries (the latest deadlines kept)
MAX_FRAMES = 40  # the innermost frames of the loop's stack kept
MAX_STACK_CHARS = 8192  # of the formatted stack (the hung event carries it)
SUFFIX = ".last_words"

# (sid, id) -> the entry: {sid, id, op, ran_ms, keep_until_ms}
Poisoned = dict[tuple[str, int], dict[str, Any]]


class Speaker(Protocol):
    """What `speak` reads of an actor (runtime.actor.Actor)."""

    name: str
    runtime_dir: Path
    current: Any  # the Call under way (sid, id, op, deadline_ms, started), or None
    poisoned: Poisoned


def record_path(runtime_dir: Path | str, name: str) -> Path:
    """Where actor `name` of the tree in `runtime_dir` leaves its last words."""
    return Path(runtime_dir) / SUCCESSION / (name + SUFFIX)


# --- the actor's side ----------------------------------------------------------------------


def install(actor: Speaker) -> None:
    """Answer LAST_WORDS_SIGNAL with `speak` (from `Actor.serve`, on the main thread)."""
    signal.signal(LAST_WORDS_SIGNAL, lambda _sig, frame: speak(actor, frame))


def speak(actor: Speaker, frame: FrameType | None) -> None:
    """The record of what the loop is doing now, then the stack in the log. The record goes
    first: a log call the loop was inside of (loguru's lock held) may refuse this one, and
    the supervisor waits for the record only."""
    now_ms = int(time.time() * 1000)
    call = actor.current
    request = None
    if call is not None:
        keep = now_ms + KEEP_MAX_MS
        if call.deadline_ms is not None:
            keep = min(keep, call.deadline_ms)
        request = {"sid": call.sid, "id": call.id, "op": call.op,
                   "ran_ms": int((time.perf_counter() - call.started) * 1000),
                   "keep_until_ms": keep}
    stack = "".join(traceback.format_list(traceback.extract_stack(frame, limit=MAX_FRAMES)))
    stack = stack[-MAX_STACK_CHARS:]
    poisoned = [e for e in actor.poisoned.values() if e["keep_until_ms"] > now_ms]
    if request is not None and request["keep_until_ms"] > now_ms:
        poisoned.append(request)
    poisoned.sort(key=lambda e: e["keep_until_ms"])
    record = {"actor": actor.name, "pid": os.getpid(), "time": now_ms / 1000,
              "request": request, "stack": stack, "poisoned": poisoned[-MAX_ENTRIES:]}
    try:
        path = succession_dir(actor.runtime_dir) / (actor.name + SUFFIX)
        write_atomic(path, json.dumps(record).encode())
    except Exception:  # (nothing to tell the supervisor: it kills us ASK_S after asking)
        with contextlib.suppress(Exception):
            logger.exception("{}: last words not written", actor.name)
    with contextlib.suppress(Exception):
        doing = (f"while running {request['op']} (client {request['sid']}, id "
                 f"{request['id']}) for {request['ran_ms']} ms") if request is not None \
            else "outside any request's handler"
        logger.error("{}: killed as hung {}; its loop's stack:\n{}", actor.name, doing, stack)


def take(runtime_dir: Path | str, name: str, loop: Loop) -> Poisoned:
    """A predecessor's last words, read and removed at start: the requests to refuse, those
    past their deadlines left out. A timer on `loop` drops each as its time ends, so that
    an actor that is not refusing anything has an empty table (one truth test a request)."""
    path = record_path(runtime_dir, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("{}: a predecessor's last words not read: {}", name, exc)
        return {}
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    poisoned: Poisoned = {}
    now_ms = int(time.time() * 1000)
    try:
        record = json.loads(data)
        for e in record["poisoned"]:
            entry = {"sid": str(e["sid"]), "id": int(e["id"]), "op": str(e["op"]),
                     "ran_ms": int(e["ran_ms"]), "keep_until_ms": int(e["keep_until_ms"])}
            if entry["keep_until_ms"] > now_ms:
                poisoned[(entry["sid"], entry["id"])] = entry
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("{}: a predecessor's last words unreadable: {}", name, exc)
        return {}
    if poisoned:
        logger.warning("{}: its predecessor (pid {}) was killed as hung; refusing a resend "
                       "of {}", name, record.get("pid"),
                       ", ".join(f"{e['op']} (client {e['sid']}, id {e['id']})"
                                 for e in poisoned.values()))
        _expire_later(poisoned, loop, now_ms)
    return poisoned


def _expire_later(poisoned: Poisoned, loop: Loop, now_ms: int) -> None:
    """Drop each entry once its time is over (the first to end first)."""
    first = min(e["keep_until_ms"] for e in poisoned.values())

    def expire() -> None:
        now = int(time.time() * 1000)
        for key in [k for k, e in poisoned.items() if e["keep_until_ms"] <= now]:
            del poisoned[key]
        if poisoned:
            _expire_later(poisoned, loop, now)

    loop.call_later(max(0, first - now_ms) / 1000 + 0.001, expire)


def refusal(entry: dict[str, Any], actor: str, category: Category,
            idempotent: bool) -> WireError:
    """The answer to a resend of a request that hung `actor`'s predecessor: not run. An
    idempotent op's is `internal` (its handler failed to answer: a bug, or input it should
    have refused); any other's (a resumable op's: resent to a successor too) is
    `outcome_unknown`, since its effect may have happened before the loop stuck."""
    what = f"{entry['op']} was running for {entry['ran_ms']} ms when {actor} was killed as hung"
    detail = {"op": entry["op"], "ran_ms": entry["ran_ms"]}
    if not idempotent:
        return WireError.of("outcome_unknown", f"{what}; it may or may not have had its "
                            "effect, and is not run again", detail=detail)
    return WireError.of("internal", f"{what}; this request is not run again (a new call is)",
                        detail=detail, category=category)


# --- the supervisor's side -----------------------------------------------------------------


def catches(pid: int) -> bool:
    """Does `pid` have a handler for LAST_WORDS_SIGNAL (SigCgt in /proc/PID/status)? One
    that does not, not yet or never, would take its default action and end."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (LAST_WORDS_SIGNAL - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def read(runtime_dir: Path | str, name: str, pid: int) -> dict[str, Any] | None:
    """The record process `pid` left as `name`'s last words, or None (none yet, another
    process's, unreadable). Left in place for the successor."""
    try:
        record = json.loads(record_path(runtime_dir, name).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("pid") != pid:
        return None
    return record

"""`moorage call|ops|subscribe|events|logs`: any op with bytes in and out, the op tables, and
following streams and logs until the tree stops.

Bytes: `call ... --attach FILE` (repeatable; `-` is stdin) sends raw attachment frames, and
`--data @FILE` (or `--data TEXT`, the bytes the command line has, UTF-8 or not) fills a bytes
argument `data` (fs.write, parse.feed, term.write). Arguments msgpack cannot carry are bad
input, refused before anything is sent. A result's attachments (fs.read's contents,
term.scrollback's bytes) go to stdout as they are with `--raw` (the body then goes to stderr),
to a file with `--out FILE`, or are shown as text after the body when stdout is a terminal and
they are UTF-8; otherwise their sizes are said on stderr.

A follower (`subscribe`, `events`, `logs -f`) watches the root's pidfd beside its input and
ends with 0 once the tree has stopped and what it had said is written out; `logs -f` follows
the log by its name, across its rotations.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import sys
from pathlib import Path
from typing import Any, BinaryIO

import zmq

from moorage.protocol import limits
from moorage.protocol.client import BytesLost, Loss, Reset, Subscription
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import (
    EXIT_OK,
    Budget,
    CliError,
    check_actor,
    connect,
    print_table,
    read,
    tree_pid,
)

MAX_INPUT = 64 * 1024 * 1024  # the protocol's message limit


def jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        try:
            return obj.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(obj).decode()}
    return repr(obj)


def read_input(spec: str) -> bytes:
    """`-` (stdin) or a file's bytes, bounded by the protocol's message size."""
    try:
        if spec == "-":
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        else:
            with open(spec, "rb") as f:
                data = f.read(MAX_INPUT + 1)
    except OSError as exc:
        raise CliError(f"cannot read {spec}: {exc.strerror}") from None
    if len(data) > MAX_INPUT:
        raise CliError(f"{spec}: more than {MAX_INPUT} bytes, the largest message")
    return data


# --- call ------------------------------------------------------------------------------------


# The integers msgpack carries: int64 and uint64 (the packer refuses any other).
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def call_args(args: argparse.Namespace) -> dict[str, Any] | None:
    """The call's arguments, refused here (a usage error, exit 2) when the JSON cannot be
    parsed or holds what msgpack cannot carry: the request would otherwise fail to pack
    after the command had already connected, as an error of ours."""
    try:
        payload = json.loads(args.json) if args.json else None
    except RecursionError:
        raise CliError("the arguments nest too deeply to be parsed (an op takes at most "
                       f"{limits.MAX_DEPTH} levels)") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"bad JSON for the arguments: {exc}") from None
    except ValueError:  # (json reads integers with int(), which refuses this many digits)
        raise CliError("the arguments cannot be sent: an integer of more than "
                       f"{sys.get_int_max_str_digits()} digits is outside the integers "
                       f"msgpack carries ({INT_MIN} to {INT_MAX})") from None
    if payload is not None and not isinstance(payload, dict):
        raise CliError("the arguments must be a JSON object ({\"name\": value, ...})")
    problem = unsendable(payload)
    if problem is not None:
        raise CliError(f"the arguments cannot be sent: {problem}")
    if args.data is not None:
        payload = dict(payload or {})
        payload["data"] = read_input(args.data[1:]) if args.data.startswith("@") \
            else data_bytes(args.data)
    return payload


def data_bytes(text: str) -> bytes:
    """`--data TEXT` as the bytes it was given on the command line: argv is bytes, which
    Python decodes with the file system encoding and surrogateescape, so os.fsencode gives
    back exactly those bytes, UTF-8 or not."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError as exc:  # (a str that never was argv: main() given a list)
        raise CliError(f"--data: {exc.reason} (character {exc.start}); give bytes that are "
                       "not text with --data @FILE") from None


def unsendable(value: Any) -> str | None:
    """Where and why parsed JSON cannot be packed (msgpack: integers in [-2**63, 2**64),
    strings and keys that encode as UTF-8, which a lone surrogate such as "\\ud800" or an
    argument's bytes that were not UTF-8 do not); None when it can. Walked without recursion:
    what json parsed may be nested about as deep as the interpreter's stack allows."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        path, v = todo.pop()
        if isinstance(v, bool) or v is None or isinstance(v, float):
            continue
        if isinstance(v, int):
            if not INT_MIN <= v <= INT_MAX:
                digits = str(v) if len(str(v)) <= 40 else f"an integer of {len(str(v))} digits"
                return (f"{_at(path)}{digits} is outside the integers msgpack carries "
                        f"({INT_MIN} to {INT_MAX})")
        elif isinstance(v, str):
            if not _utf8(v):
                return f"{_at(path)}a string that is not UTF-8 text ({_first_bad(v)})"
        elif isinstance(v, dict):
            for k in v:
                if not _utf8(k):
                    return f"{_at(path)}a key that is not UTF-8 text ({_first_bad(k)})"
            todo.extend((f"{path}{_step(k)}", x) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            todo.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def _at(path: str) -> str:
    """Where in the arguments, as a message's prefix (none for the object itself)."""
    return f"{path.lstrip('.')}: " if path else ""


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _first_bad(text: str) -> str:
    """The first character UTF-8 cannot encode and where it is, escaped (a lone surrogate
    cannot be printed as it is)."""
    i = next(i for i, ch in enumerate(text) if not _utf8(ch))
    return f"{ascii(text[i])[1:-1]} at character {i}"


def _step(key: str) -> str:
    """A key as a step of a path in a message: `.name`, or `["odd key"]` escaped."""
    if key.isidentifier() and key.isascii():
        return f".{key}"
    return f"[{json.dumps(key)}]"


def cmd_call(args: argparse.Namespace) -> int:
    if args.raw and args.out:
        raise CliError("--raw and --out both say where the attachments go: pick one")
    payload = call_args(args)
    attachments = [read_input(a) for a in args.attach or []]
    budget = Budget(args.timeout)
    with connect(args) as c:
        check_actor(c, args.actor, budget)
        # --timeout bounds the whole command; without it the call has its op's own timeout
        # (sys.info's timeout_ms, `config set` overrides included: the client's choice).
        reply = c.request(args.actor, args.op, payload,
                          timeout=budget.left() if args.timeout_given else None,
                          attachments=attachments)
    body = json.dumps(reply.body, indent=2, default=jsonable)
    atts = reply.attachments
    if args.raw:
        print(body, file=sys.stderr)
        for a in atts:
            sys.stdout.buffer.write(a)
        sys.stdout.buffer.flush()
        return EXIT_OK
    print(body)
    if args.out:
        try:
            with open(args.out, "wb") as f:
                for a in atts:
                    f.write(a)
        except OSError as exc:
            raise CliError(f"cannot write {args.out}: {exc.strerror}") from None
        print(f"{sum(map(len, atts))} bytes in {len(atts)} attachment(s) written to "
              f"{args.out}", file=sys.stderr)
        return EXIT_OK
    for i, a in enumerate(atts):
        text = _text(a) if sys.stdout.isatty() else None
        if text is not None:
            print(text, end="" if text.endswith("\n") else "\n")
        else:
            print(f"[attachment {i}: {len(a)} bytes; --raw or --out FILE to get them]",
                  file=sys.stderr)
    return EXIT_OK


def _text(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


# --- ops -------------------------------------------------------------------------------------


def arg_text(args: dict[str, Any]) -> str:
    return ", ".join(f"{n}: {a['type']}" + ("" if a["required"] else "?")
                     for n, a in args.items()) or "-"


def cmd_ops(args: argparse.Namespace) -> int:
    budget = Budget(args.timeout)
    with connect(args) as c:
        if args.actor is not None:
            check_actor(c, args.actor, budget)
            actors = [args.actor]
        else:
            actors = sorted(read(c, "supervisor", "sup.endpoints", budget=budget))
        tables: dict[str, dict[str, Any]] = {}
        for a in actors:
            try:
                tables[a] = read(c, a, "sys.info", budget=budget, cap=2.0)["ops"]
            except MoorageError as exc:
                if args.actor is not None:
                    raise
                print(f"moorage: {a} does not answer ({exc.name}); its ops are left out",
                      file=sys.stderr)
    if args.op is not None:
        spec = tables[args.actor].get(args.op)
        if spec is None:
            raise CliError(f"{args.actor} has no op {args.op!r}; it has: "
                           f"{', '.join(sorted(tables[args.actor]))}")
        if args.json:
            print(json.dumps({args.op: spec}, indent=2))
            return EXIT_OK
        print(f"{args.actor} {args.op}")
        print(f"  {spec.get('doc') or '(no description)'}")
        print(f"  idempotent: {'yes' if spec['idempotent'] else 'no'}  timeout: "
              f"{spec['timeout_ms']} ms  shed under pressure: "
              f"{'no' if spec.get('essential', True) else 'yes'}")
        if spec["args"]:
            print("  arguments:")
            for n, a in spec["args"].items():
                print(f"    {n}: {a['type']}" + ("" if a["required"] else " (optional)"))
        else:
            print("  arguments: none")
        if "result" in spec:
            print(f"  result: {json.dumps(spec['result'])}")
        return EXIT_OK
    if args.json:
        print(json.dumps(tables, indent=2))
        return EXIT_OK
    rows = []
    for a, table in tables.items():
        for name, spec in sorted(table.items()):
            rows.append([a, name, arg_text(spec["args"]), "yes" if spec["idempotent"] else "no",
                         str(spec["timeout_ms"]), first_sentence(spec.get("doc") or "")])
    print_table(["ACTOR", "OP", "ARGS (? optional)", "IDEMPOTENT", "TIMEOUT_MS", "WHAT"], rows)
    return EXIT_OK


def first_sentence(doc: str) -> str:
    """A table cell: the description's first sentence (`moorage ops ACTOR OP` has it all)."""
    end = doc.find(". ")
    return doc if end < 0 else doc[: end + 1]


# --- following -------------------------------------------------------------------------------


class TreeWatch:
    """The root's pidfd: readable once the tree has stopped. A tree elsewhere
    (`--connection`) has no pid here: its follower runs until it is stopped or its count is
    reached, says on stderr when its link drops or comes back, and ends (exit 2) when the
    tree refuses its key (`unauthorized`: follow)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.fd: int | None = None  # no tree (or gone already): nothing to wait for
        if getattr(args, "connection", None):
            return
        pid = tree_pid(args.runtime_dir)
        if pid is not None and pid > 0:
            try:
                self.fd = os.pidfd_open(pid)
            except (ProcessLookupError, OSError):
                self.fd = None

    def stopped(self, timeout: float = 0.0) -> bool:
        if self.fd is None:
            return True
        return bool(select.select([self.fd], [], [], timeout)[0])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def follow(sub: Subscription, watch: TreeWatch, emit: Any, count: int | None = None) -> int:
    """Emit every event until `count` of them, or the tree stops (then 0). Following a tree
    elsewhere, a refused key ends it (`next` raises `unauthorized`: exit 2), and each drop
    and return of its link is said on stderr (the stream's own output stays on stdout)."""
    poller = zmq.Poller()
    poller.register(sub.sock, zmq.POLLIN)
    if sub.monitor is not None:
        poller.register(sub.monitor, zmq.POLLIN)
    if watch.fd is not None:
        poller.register(watch.fd, zmq.POLLIN)
    seen = 0
    while count is None or seen < count:
        ev = sub.next(timeout=0)
        for change in sub.link_changes():
            say_link(sub, change)
        if ev is not None:
            emit(ev)
            seen += 1
            continue
        ready = dict(poller.poll())
        if watch.fd is not None and watch.fd in ready:
            while (ev := sub.next(timeout=0.05)) is not None:  # what it said before it went
                emit(ev)
            return EXIT_OK
    return EXIT_OK


def say_link(sub: Subscription, change: str) -> None:
    """One line on stderr for a drop ("dropped") or return ("back") of a remote stream's link."""
    where = f"{sub.actor}'s stream at {sub.endpoint}"
    if change == "dropped":
        print(f"moorage: the link to {where} dropped; reconnecting (what is published "
              "meanwhile is replayed, or reported lost, once it is back)", file=sys.stderr,
              flush=True)
    else:
        print(f"moorage: the link to {where} is back", file=sys.stderr, flush=True)


def hello_elsewhere(args: argparse.Namespace, client: Any, actor: str, budget: Budget) -> None:
    """Before following a tree elsewhere (`--connection`), one `sys.hello` to `actor` within
    the command's --timeout: a refused key (`unauthorized`, exit 2), a wrong server key or a
    tree that does not answer (`timeout`, saying whether anything was delivered) is said
    now, not by a follower that prints nothing for ever. A tree on this host needs none:
    its lock said it runs."""
    if getattr(args, "connection", None):
        read(client, actor, "sys.hello", {"client": f"moorage-cli {client.sid}"},
             budget=budget)


def write_raw(out: BinaryIO, chunks: list[bytes]) -> None:
    for ch in chunks:
        out.write(ch)
    out.flush()


def cmd_subscribe(args: argparse.Namespace) -> int:
    if args.from_seq is not None and args.from_seq < 1:
        raise CliError("--from-seq counts from 1")
    watch = TreeWatch(args)
    budget = Budget(args.timeout)
    try:
        with connect(args) as c:
            check_actor(c, args.actor, budget)
            sub = c.subscribe(args.actor, [args.topic], from_seq=args.from_seq)
            try:
                hello_elsewhere(args, c, args.actor, budget)
                return follow(sub, watch, lambda ev: emit_stream(ev, args))
            finally:
                sub.close()
    finally:
        watch.close()


def emit_stream(ev: Any, args: argparse.Namespace) -> None:
    if isinstance(ev, StreamMessage):
        if args.raw:
            write_raw(sys.stdout.buffer, ev.attachments)
            return
        if args.json:
            line = {"seq": ev.seq, "topic": ev.topic, "epoch": ev.epoch, "body": ev.body}
            if ev.attachments:
                line["attachments"] = [jsonable(a) for a in ev.attachments]
            print(json.dumps(line, default=jsonable), flush=True)
            return
        size = sum(map(len, ev.attachments))
        print(f"{ev.topic} #{ev.seq} {json.dumps(ev.body, default=jsonable)}"
              + (f" +{size} bytes" if ev.attachments else ""), flush=True)
        return
    if isinstance(ev, Loss):
        line = {"lost": [ev.first, ev.last], "topic": ev.topic}
        text = f"LOSS: messages {ev.first}-{ev.last} of {ev.topic} are gone (beyond retention)"
    elif isinstance(ev, Reset):
        line = {"reset": ev.new_epoch}
        text = f"RESET: the publisher restarted (epoch {ev.new_epoch}); seqs start again"
    elif isinstance(ev, BytesLost):
        line = {"lost_bytes": [ev.from_offset, ev.to_offset], "topic": ev.topic}
        text = (f"LOSS: bytes {ev.from_offset}-{ev.to_offset} of {ev.topic} are gone (no "
                "longer in the terminal's scrollback)")
    else:
        return
    if args.raw:
        print(text, file=sys.stderr, flush=True)
    elif args.json:
        print(json.dumps(line), flush=True)
    else:
        print(text, flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    watch = TreeWatch(args)
    budget = Budget(args.timeout)
    try:
        with connect(args) as c:
            sub = c.subscribe("supervisor", ["sup.event"], from_seq=1 if args.replay else None)
            try:
                hello_elsewhere(args, c, "supervisor", budget)
                return follow(sub, watch, emit_event, args.count)
            finally:
                sub.close()
    finally:
        watch.close()


def emit_event(ev: Any) -> None:
    if isinstance(ev, StreamMessage):
        print(json.dumps({"seq": ev.seq, **ev.body}, default=jsonable), flush=True)
    elif isinstance(ev, Loss):
        print(json.dumps({"lost": [ev.first, ev.last]}), flush=True)
    elif isinstance(ev, Reset):
        print(json.dumps({"reset": ev.new_epoch}), flush=True)


def cmd_logs(args: argparse.Namespace) -> int:
    logs: Path = args.state_dir / "logs"
    name = args.actor or "supervisor"
    path = logs / f"{name}.log"
    if not path.exists():
        have = sorted(p.stem for p in logs.glob("*.log")) if logs.exists() else []
        raise CliError(f"no log for {name!r} in {logs}" +
                       (f"; there are: {', '.join(have)}" if have else ""))
    out = sys.stdout.buffer
    if not args.follow:
        with open(path, "rb") as f:
            copy_out(f, out)
        return EXIT_OK
    watch = TreeWatch(args)
    try:
        return LogFollower(path, out).run(watch)
    finally:
        watch.close()


def copy_out(f: BinaryIO, out: BinaryIO) -> int:
    """What `f` has from where it is to its end, to `out`; how many bytes that was."""
    copied = 0
    while chunk := f.read(65536):
        out.write(chunk)
        copied += len(chunk)
    out.flush()
    return copied


class LogFollower:
    """A log file followed by its name, as `tail -F` does, until the tree stops: the
    actor's RotatingFile renames a full log to NAME.log.1 (.1 to .2 before it) and goes on in
    a new NAME.log, so the file opened first stops growing for good.

    Idle, it looks at the path once per poll (one stat): another file there (its inode
    changed) is a rotation, and the old file's last lines are read before the new one from
    its start, with any file rotated past in between (now NAME.log.1, when the old one is
    .2), so no line is lost or repeated; the same file shorter than what was read was
    truncated (by someone else: the tree only appends), and is read again from its start.
    A path missing for a moment (between a rename and the new file) is waited for."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path = path
        self.out = out
        self.file: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by run)
        self.held = identity(os.fstat(self.file.fileno()))  # which file self.file is
        self.read = 0  # how far self.file has been read (kept: tell() is a system call)

    def run(self, watch: TreeWatch) -> int:
        """Follow until the tree stops, then write what it said last and end (EXIT_OK)."""
        try:
            while True:
                self.read += copy_out(self.file, self.out)
                stopped = watch.stopped(0.2)
                self.check()  # (after the tree stopped too: its last lines may be in a new file)
                if stopped:
                    copy_out(self.file, self.out)
                    return EXIT_OK
        finally:
            self.file.close()

    def check(self) -> None:
        """Go on to the file now at the path if it is another one; read again from the start
        a file that was truncated."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return  # (rotated, and the new file not made yet: the old one still has its end)
        if identity(now) == self.held:
            if now.st_size < self.read:
                print(f"moorage: {self.path} was truncated; following it from its start",
                      file=sys.stderr, flush=True)
                self.file.seek(0)
                self.read = 0
            return
        try:
            new: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (kept as self.file)
        except FileNotFoundError:
            return  # (gone again since the stat: looked at on the next poll)
        new_id = identity(os.fstat(new.fileno()))
        copy_out(self.file, self.out)  # the old file's last lines, then the ones between
        for older in self.rotated_between(new_id):
            with older:
                copy_out(older, self.out)
        self.file.close()
        self.file, self.held, self.read = new, new_id, 0

    def rotated_between(self, new_id: tuple[int, int]) -> list[BinaryIO]:
        """The rotated files newer than the one held and older than the new one, opened,
        oldest first: if the held file is now NAME.log.N, the files .N-1 down to .1 were
        written after it (several rotations within one poll). Empty when the held file is
        no longer among them (removed: which files came after it cannot be told)."""
        found: list[BinaryIO] = []
        n = 0
        while True:
            n += 1
            try:
                f: BinaryIO = open(f"{self.path}.{n}", "rb")  # noqa: SIM115 (closed by the caller)
            except FileNotFoundError:
                break
            got = identity(os.fstat(f.fileno()))
            if got == self.held:
                f.close()
                return found[::-1]
            if got == new_id:
                f.close()  # (rotated again since: read as the new file)
            else:
                found.append(f)
        for f in found:
            f.close()
        return []


def identity(st: os.stat_result) -> tuple[int, int]:
    """A file, whatever its name now: its device and inode."""
    return st.st_dev, st.st_ino

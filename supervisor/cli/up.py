"""`moorage up` and `moorage adopt`: starting a tree as an editor does, and taking one over.

`up` in the foreground runs the root supervisor in this process. Its stdout carries exactly
one line, then end of file: `{"moorage": "ready", ...}` once every child answers, or
`{"moorage": "failed", "error": {code, name, message}}` with a non-zero exit (`--ready-fd N`
sends the line there instead). Everything else this process and the tree's write on stdout
goes to stderr: fd 1 is pointed at fd 2 as soon as the line's channel is taken from it.

A start refused before the tree runs (a bad argument, a `--parent` that is gone, a state dir
that cannot be made) says so the same way: the failed line, where the ready line would have
gone (`refuse`).

A stop signal (SIGINT, SIGTERM, SIGHUP) before the tree is ready is a failed start too, named
on the failed line: the root's own handlers say so once it serves, and until then the signal
is raised where the start is (`interrupt_start`), so that it ends as any failed start ends.
A stop signal ignored when `up` started (`nohup`, a non-interactive shell's `&`) stays ignored,
before and after the tree is ready. A tree that follows an editor (`--parent`,
`--exit-on-stdin-eof`) is in a session of its own (`own_session`): what the editor's process
group is sent is not the tree's.

`up --detach` starts the same command in a new session with the line's pipe as its
`--ready-fd`, and prints what comes back: the ready line (exit 0), or the failed line after
stopping everything it started (its process group). It never asks the tree anything, so a tree
that cannot come up cannot make it wait past `--timeout` plus the start. A stop signal while it
waits (`StopSignals`) stops the tree it started, and the failed line says by what. The
detached tree's stdout and stderr are `<state dir>/logs/up.out` (or the runtime dir's, where
the state dir takes no file: a tree runs on a read-only state dir), kept under
MOORAGE_CONSOLE_ROTATE bytes (default 2 MiB) with two older copies, up.out.1 and up.out.2
(moorage.actors.runtime.logs).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

import zmq

from moorage.actors.runtime.signals import IGNORED_STOP_ENV
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import adopt
from moorage.protocol.errors import WireError
from moorage.supervisor.cli.common import (
    EXIT_ERROR,
    EXIT_ESCALATED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    followed,
    need_tree,
)
from moorage.supervisor.spec import ConfigError

if TYPE_CHECKING:
    from moorage.supervisor.lifecycle import LifecycleOptions

DETACH_START_S = 60.0  # on top of --timeout: a loaded machine may take this long to start
# What an editor, a terminal or a user sends to end `up`: before the tree is ready, each is a
# failed start (and, once the tree serves, a stop it answers itself: Actor.serve).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def package_version() -> str:
    from importlib import metadata  # (27 ms to import: only where a version is asked for)

    try:
        return metadata.version("moorage")
    except metadata.PackageNotFoundError:
        return "unknown"


class StartFailed(Exception):
    """`up` failed before the tree was ready: the error for the failed line, and the exit
    code."""

    def __init__(self, name: str, message: str, code: int) -> None:
        super().__init__(message)
        self.error = WireError.of(name, message)
        self.code = code

    def line(self) -> dict[str, Any]:
        e = self.error
        return {"moorage": "failed", "error": {"code": e.code, "name": e.name,
                                               "message": e.message}}


def take_ready_channel(ready_fd: int | None) -> int:
    """The fd the ready (or failed) line goes to; from here on fd 1 is stderr, so neither
    our logs nor any child's output can reach the line's reader."""
    if ready_fd is not None:
        try:
            # A copy: the number given may be 1 (stdout), which is about to become stderr.
            fd = os.dup(ready_fd)
        except (OSError, OverflowError):
            raise StartFailed("bad_config", f"--ready-fd {ready_fd}: not an open file "
                              "descriptor", EXIT_USAGE) from None
        if ready_fd > 2:  # only the copy stays, so the reader sees end of file after the line
            os.close(ready_fd)
    else:
        fd = os.dup(1)
    os.set_inheritable(fd, False)
    sys.stdout.flush()
    os.dup2(2, 1)
    return fd


def refuse(exc: StartFailed, ready_fd: int | None = None) -> int:
    """A start that ends before the ready line's channel is taken: the failed line where the
    ready line would have gone (`ready_fd` when that is an open descriptor, else stdout), the
    message on stderr; the exit code."""
    from moorage.supervisor.lifecycle import write_line

    sys.stdout.flush()
    try:
        fd = os.dup(1 if ready_fd is None else ready_fd)
    except (OSError, OverflowError):  # --ready-fd names no open file: stdout, as without it
        fd = os.dup(1)
    write_line(fd, exc.line())
    print(f"moorage: {exc}", file=sys.stderr)
    return exc.code


def check_parent(pid: int | None) -> None:
    """A `--parent` the tree can follow: a process of this user that a pidfd can be had for.
    A thread's id passes the first test (/proc shows it too), not the second, and a tree
    started to follow one would say ready, then find it cannot and stop itself as orphaned."""
    if pid is None:
        return
    from moorage.supervisor.lifecycle import same_user

    if pid <= 0 or not same_user(pid) or not followable(pid):
        raise CliError(f"--parent {pid}: no such process of this user")


def followable(pid: int) -> bool:
    """A pidfd can be opened for `pid` (closed at once): it is a process, not a thread."""
    try:
        os.close(os.pidfd_open(pid))
    except (OSError, OverflowError):
        return False
    return True


def check_parent_for_start(pid: int | None) -> None:
    """check_parent, as `up` says it: an editor that died while starting the tree, or one
    whose pid the tree cannot see (a sandbox), is told on the line it reads."""
    try:
        check_parent(pid)
    except CliError as exc:
        raise StartFailed("start_failed", str(exc), exc.code) from None


def cmd_up(args: argparse.Namespace) -> int:
    # (before anything is forked: every process of the tree keeps these ignored, Actor.serve)
    os.environ[IGNORED_STOP_ENV] = ",".join(
        s.name for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN)
    if args.detach:
        return detach(args)
    if args.parent is not None or args.exit_on_stdin_eof:
        own_session()
    from moorage.supervisor.lifecycle import LifecycleOptions

    try:
        fd = take_ready_channel(args.ready_fd)
    except StartFailed as exc:
        return refuse(exc, args.ready_fd)
    # The tree clears `ready_fd` when it says ready there and closes it: from then on the
    # number may be another file's, and nothing more may be written to it.
    opts = LifecycleOptions(
        instance=args.instance or args.runtime_dir.name, ready_fd=fd, parent=args.parent,
        stdin_eof=args.exit_on_stdin_eof, version=package_version())
    restore = interrupt_start()
    try:
        return start(args, opts)
    except StartFailed as exc:
        say_failed(opts, exc)
        print(f"moorage: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:  # Interrupted, or Ctrl-C's default handler's own
        if opts.ready_fd is None:  # (said ready: the tree's to answer, not a failed start)
            raise
        failed = asked_to_stop(getattr(exc, "signum", signal.SIGINT))
        say_failed(opts, failed)
        print(f"moorage: {failed}", file=sys.stderr)
        return failed.code
    except Exception as exc:  # a bug of ours: main says so; an editor waiting is told too
        say_failed(opts, StartFailed("start_failed", f"unexpected {type(exc).__name__}: "
                                     f"{exc}", EXIT_ERROR))
        raise
    finally:
        restore()


def own_session() -> None:
    """A tree that follows an editor lives as long as the editor does (--parent, or its pipe
    on stdin), and a signal to the editor's process group must not end it sooner: a hang-up
    of the terminal the editor was started from, a Ctrl-C there, a launcher's kill of the
    group would reach every process of the tree, each taking it as a stop, and the grace
    period that keeps sessions through the editor's death would never begin. So the root
    leaves that group for a session of its own, as `--detach`'s tree is in, before it forks
    anything (every process of the tree is then in it). One that leads its group already
    cannot (setsid fails), and needs not: the editor spawned it detached (a session of its
    own already), or an interactive shell started it as a job (a group of its own, which no
    signal to the editor's group reaches; the terminal's hang-up does: `nohup` for that)."""
    if os.getpgrp() == os.getpid():
        return
    try:
        os.setsid()
    except OSError as exc:  # (a group of our pid's number left by an earlier process)
        print(f"moorage: the tree stays in the editor's process group: {exc}",
              file=sys.stderr)


class Interrupted(KeyboardInterrupt):
    """A stop signal that came while `up` started the tree, before the root's own handlers:
    a KeyboardInterrupt, as SIGINT's default handler raises, that says which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def asked_to_stop(signum: int) -> StartFailed:
    """The failed line of a start cut by a signal, worded as the root says it once it serves
    (launch.run_root's stop cause), with its exit code: the same whenever the signal came."""
    return StartFailed("start_failed", f"the tree was asked to stop "
                       f"({signal.Signals(signum).name}) before it was ready", EXIT_ERROR)


def handled_stop_signals(handler: Callable[[int, FrameType | None], Any]) -> dict[int, Any]:
    """Put `handler` on each stop signal not ignored (a job started with SIGINT ignored, as
    a shell starts one in the background, or under nohup, keeps it ignored); the handlers
    it replaced, by signal."""
    old = {}
    for sig in STOP_SIGNALS:
        was = signal.getsignal(sig)
        if was is signal.SIG_IGN or was is None:  # (None: not one Python can put back)
            continue
        old[sig] = signal.signal(sig, handler)
    return old


def interrupt_start() -> Callable[[], None]:
    """Until the root serves (Actor.serve puts its own handlers on these signals), a stop
    signal raises Interrupted where the start is, as Ctrl-C's KeyboardInterrupt would: the
    start ends as a failed one, run_root's clean-up included (SIGTERM and SIGHUP would end
    the process at once, with no line). Only the first raises: what follows it is that
    clean-up and the failed line, which a second must not cut short. Returns what puts the
    replaced handlers back, where they are still these."""
    raised: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    old = handled_stop_signals(on_signal)

    def restore() -> None:
        for sig, handler in old.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)

    return restore


def say_failed(opts: LifecycleOptions, exc: StartFailed) -> None:
    """The failed line, while the ready channel is still ours (the tree not ready yet)."""
    from moorage.supervisor.lifecycle import write_line

    fd, opts.ready_fd = opts.ready_fd, None
    if fd is not None:
        write_line(fd, exc.line())


def start(args: argparse.Namespace, opts: LifecycleOptions) -> int:
    """Load the config, run the tree; StartFailed for anything that ends it before ready."""
    from moorage.supervisor.config import load
    from moorage.supervisor.launch import AlreadyRunning, Unbindable, run_root, tree_names
    from moorage.supervisor.remote import listen_plan
    from moorage.supervisor.sdnotify import check_env

    check_parent_for_start(opts.parent)
    try:  # systemd's variables, read by the root once it runs
        check_env()
    except ValueError as exc:
        raise StartFailed("start_failed", str(exc), EXIT_USAGE) from None
    try:
        doc, spec = load(args.config, allow_external=args.allow_external_actors)
    except ConfigError as exc:
        raise StartFailed("bad_config", f"bad configuration: {exc}", EXIT_USAGE) from None
    if args.metrics_http:
        from moorage.supervisor.prom import parse_listen

        try:
            parse_listen(args.metrics_http)
        except ValueError as exc:
            raise StartFailed("bad_config", f"--metrics-http: {exc}", EXIT_USAGE) from None
        doc["metrics_http"] = args.metrics_http
    if args.listen:  # remote mode (PROTOCOL.md "Remote"): over [listen] of the config
        doc["listen"] = {**(doc.get("listen") or {}), "endpoint": args.listen}
    try:  # refused before anything starts: a bad address, missing or unsafe keys
        listen_plan(doc, tree_names(spec))
    except ValueError as exc:
        raise StartFailed("bad_config", f"cannot listen: {exc}", EXIT_USAGE) from None
    opts.grace_s = float((doc.get("lifecycle") or {}).get("grace_s", 60))
    try:
        endpoints.make_private_dirs(args.state_dir)
        code, why = run_root(doc, spec, args.runtime_dir, args.log_level, opts,
                             args.state_dir)
    except endpoints.PathTooLong as exc:
        raise StartFailed("start_failed", str(exc), EXIT_USAGE) from None
    except AlreadyRunning as exc:
        # (`down` alone is the wrong advice for an editor's second window, which would stop
        # the first's tree: it can use the running one, and adopt it to be followed)
        running = (args.runtime_dir / endpoints.CONNECTION_FILE).exists()
        raise StartFailed("already_running", f"{exc}" + (
            "; a second editor window can use it as it is, and `moorage adopt --parent <its "
            "pid>` has the tree follow that window" if running else ""), EXIT_ERROR) from None
    except Unbindable as exc:
        raise StartFailed("start_failed", str(exc), EXIT_ERROR) from None
    except PermissionError as exc:
        raise StartFailed("start_failed", str(exc), EXIT_ERROR) from None
    except OSError as exc:
        raise StartFailed("start_failed", f"{type(exc).__name__}: {exc}", EXIT_ERROR) from None
    except zmq.ZMQError as exc:  # a socket the root binds: a port taken, an address not ours
        raise StartFailed("start_failed", f"cannot bind: {exc}", EXIT_ERROR) from None
    if opts.ready_fd is not None:  # never got ready
        said = (f"the tree gave up during start: {why or 'a child kept dying'} (see "
                "`moorage logs`)" if code == EXIT_ESCALATED else
                f"the tree could not finish its start: {why}" if code == EXIT_ERROR and why
                else f"the tree was asked to stop ({why}) before it was ready" if why else
                f"the tree stopped before it was ready (exit code {code})")
        raise StartFailed("start_failed", said, code or EXIT_ERROR)
    if code == EXIT_ESCALATED:
        print(f"moorage: the tree gave up: {why or 'a child kept dying'} (see "
              "`moorage logs`)", file=sys.stderr)
    return code


# --- --detach ------------------------------------------------------------------------------


def detach(args: argparse.Namespace) -> int:
    """Start `up` in a new session; print its ready line once it is ready, or stop what it
    started and print why it failed (a failure before it is started too: `refuse`)."""
    if args.exit_on_stdin_eof or args.ready_fd is not None:
        return refuse(StartFailed(
            "bad_config", "--detach takes neither --exit-on-stdin-eof nor --ready-fd: the "
            "detached tree's stdin is /dev/null and its line is printed here", EXIT_USAGE))
    try:
        check_parent_for_start(args.parent)
        return run_detached(args)
    except StartFailed as exc:
        return refuse(exc)


def open_console(state_dir: Path, runtime_dir: Path) -> BinaryIO:
    """The detached tree's console, `<state dir>/logs/up.out` (its directories 0700, made
    one level at a time). Where the state dir takes no file (read-only, full), the runtime
    dir's `up.out`, said on stderr: the tree runs there too, its processes logging to the
    console until their log files can be had. StartFailed if neither can be had."""
    tried = []
    for where in (state_dir / "logs", runtime_dir):
        try:
            endpoints.make_private_dirs(where)
            return _told(open(where / "up.out", "ab"), tried)
        except OSError as exc:
            tried.append(f"{where}: {exc.strerror or exc}")
    raise StartFailed("start_failed", "cannot open the tree's console: " + "; ".join(tried),
                      EXIT_ERROR)


def _told(console: BinaryIO, tried: list[str]) -> BinaryIO:
    if tried:
        print(f"moorage: the tree's console is {console.name}: none could be opened in "
              f"{tried[0]}", file=sys.stderr)
    return console


def run_detached(args: argparse.Namespace) -> int:
    from moorage.supervisor.zygote import new_interpreter

    console = open_console(args.state_dir, args.runtime_dir)
    out = Path(console.name)
    r, w = os.pipe2(os.O_CLOEXEC)
    # The tree imports what this process can, never from the working directory (an editor's
    # workspace), and keeps this environment, the user's PYTHONPATH included.
    argv, base_env = new_interpreter("from moorage.supervisor.cli.commands import main; "
                                     "sys.exit(main())")
    cmd = [*argv, "--instance-dir", str(args.runtime_dir), "up", "--ready-fd", str(w),
           "--log-level", args.log_level]
    if args.instance:
        cmd[len(argv):len(argv)] = ["--instance", args.instance]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    if args.metrics_http:
        cmd += ["--metrics-http", args.metrics_http]
    if args.listen:
        cmd += ["--listen", args.listen]
    if args.parent is not None:
        cmd += ["--parent", str(args.parent)]
    if args.allow_external_actors:
        cmd.append("--allow-external-actors")
    from moorage.actors.runtime.logs import CONSOLE_MAX_BYTES, CONSOLE_ROTATE_ENV

    # The tree's console is `out`, for as long as it runs: kept under a size (rotated).
    env = {CONSOLE_ROTATE_ENV: str(CONSOLE_MAX_BYTES), **base_env,
           "MOORAGE_STATE_DIR": str(args.state_dir)}
    # From before the tree exists to the line said: a stop signal is ours to answer (the tree,
    # in its own session, would outlive us and run on unseen).
    with StopSignals() as stop:
        try:
            with console:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                        stderr=console, env=env, start_new_session=True,
                                        pass_fds=(w,))
        except OSError as exc:
            os.close(r)
            raise StartFailed("start_failed", f"cannot start the tree: {exc}",
                              EXIT_ERROR) from None
        finally:
            os.close(w)
        try:
            line = read_line(r, args.timeout + DETACH_START_S, wake=stop.fd)
        finally:
            os.close(r)
        if stop.signum is not None:
            return interrupted(proc, stop.signum)
        return said(proc, line, out)


def interrupted(proc: subprocess.Popen, signum: int) -> int:
    """`up --detach` asked to stop before it could print the ready line: the tree it started
    is stopped, and the failed line says by what, with the foreground's exit code (as
    `asked_to_stop`)."""
    stop_group(proc)
    failed = StartFailed("start_failed", f"`moorage up --detach` was asked to stop "
                         f"({signal.Signals(signum).name}) before the tree was ready; the "
                         "tree it started was stopped", EXIT_ERROR)
    print(json.dumps(failed.line(), separators=(",", ":")), flush=True)
    print(f"moorage: {failed}", file=sys.stderr)
    return failed.code


def said(proc: subprocess.Popen, line: str, out: Path) -> int:
    """What the detached tree said (`line`: the ready line, the failed line, or nothing it
    could finish) printed, and on anything but ready, the tree stopped."""
    try:
        msg = json.loads(line) if line else None
    except ValueError:
        msg = None
    if isinstance(msg, dict) and msg.get("moorage") == "ready":
        print(json.dumps(msg, separators=(",", ":")), flush=True)
        return EXIT_OK
    # Failed, died, or too slow: nothing it started may stay.
    if isinstance(msg, dict) and msg.get("moorage") == "failed":
        try:  # it exits right after saying why: its exit code is the one to pass on
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    stop_group(proc)
    if not (isinstance(msg, dict) and msg.get("moorage") == "failed"):
        what = "did not come up in time" if proc.returncode in (None, -signal.SIGKILL) \
            else f"exited during start-up (code {proc.returncode})"
        msg = StartFailed("start_failed", f"the tree {what}; its output is in {out}",
                          EXIT_ERROR).line()
    print(json.dumps(msg, separators=(",", ":")), flush=True)
    print(f"moorage: {msg['error']['message']}", file=sys.stderr)
    code = proc.returncode if proc.returncode and proc.returncode > 0 else EXIT_ERROR
    return code


def read_line(fd: int, timeout: float, wake: int | None = None) -> str:
    """The first line written to `fd`, or what came before end of file, the timeout, or
    `wake` turning readable (StopSignals.fd)."""
    data = b""
    end = time.monotonic() + timeout
    watched = [fd] if wake is None else [fd, wake]
    while b"\n" not in data:
        left = end - time.monotonic()
        readable = select.select(watched, [], [], left)[0] if left > 0 else []
        if fd not in readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


class StopSignals:
    """While `up --detach` starts its tree and waits for the line: the first stop signal
    (STOP_SIGNALS) is noted and wakes the wait (a byte on `fd`), and is never raised where
    the process happens to be (between the tree's fork and Popen's return, it would leave a
    tree no one knows of). A later one changes nothing: the first is being answered."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.fd, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._old: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            try:
                os.write(self._w, b"\0")
            except OSError:  # (a full pipe already wakes the wait)
                pass

    def __enter__(self) -> StopSignals:
        self._old = handled_stop_signals(self._on_signal)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self.fd)
        os.close(self._w)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL the detached tree's whole session (the root's group: its zygotes, actors and
    their shells follow through PR_SET_PDEATHSIG) and reap the root."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


# --- adopt ---------------------------------------------------------------------------------


def cmd_adopt(args: argparse.Namespace) -> int:
    """Take the tree over: cancel an orphaned tree's shutdown, follow --parent from now on."""
    check_parent(args.parent)
    need_tree(args.runtime_dir)
    with Client(args.runtime_dir, timeout=args.timeout) as c:
        r = adopt(c, args.parent) if args.parent is not None else c.call(
            "supervisor", "sys.hello", {"client": "moorage adopt", "adopt": True})
    life = r["lifecycle"]
    if args.json:
        print(json.dumps(life))
        return EXIT_OK
    print(f"adopted: the tree is {life['state']}, {followed(life)}")
    return EXIT_OK


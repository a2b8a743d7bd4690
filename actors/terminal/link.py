"""The link between the pty keeper and the terminal actor: length-prefixed msgpack on a Unix
stream socket, non-blocking on both ends, driven by the actor's loop.

A frame is a 4-byte big-endian length and a msgpack map with a `t` (its type). One connection
at a time, the terminal actor's; the keeper takes a new one over from an old one. Messages
(`s` is a session id, `r` a request number the reply echoes, `off` an absolute byte offset of
the session's output stream):

  terminal -> keeper
    hello   {tok, held}                             -> welcome, then `fds` for each session
                                                       not in `held` (the sessions whose copies
                                                       the actor has), `exit` for each that
                                                       ended, and `out` for what is unread
    adopt   {r, s, pid, started, tty, cols, rows, meta}
                                                    a session the actor held while no keeper
                                                    did (a new keeper's predecessor died),
                                                    its master and ring along (SCM_RIGHTS)
                                                    -> ok | err
    create  {r, s, path, argv, env, cwd, cols, rows, meta, scrollback?, base?}
                                                    -> ok {pid, started, tty}, then fds {s}
                                                       | err (`started`: the shell's start
                                                       time, keeper/ptys.process_start)
    write   {r?, s, data, at?}                      input, queued -> ok {queued, pending,
                                                    done} when `r` is given (`pending`: input
                                                    still queued for the PTY after it; `at`:
                                                    the input's offset, `done`: how far the
                                                    keeper has written or dropped it, as its
                                                    ledger says, keeper/ledger.py); err {r?,
                                                    s, what: "write"} always
    resize  {r?, s, cols, rows}                     -> ok | err
    signal  {r, s, sig, to: "fg"|"shell", seq?}     -> ok {pgid} | err (`seq`: the ledger
                                                    notes it, so a successor sends it only
                                                    if it was not; one that may have been
                                                    sent: err outcome_unknown)
    close   {r, s}                                  -> ok   (hangs the session up)
    pass    {r, s}                                  -> fds {s}, then ok | err: the session's
                                                       master and ring again (they did not
                                                       come, or could not be used)
    ack     {s, off}                                output before `off` is published: drop it
    meta    {s, meta}                               the actor's state for the session (kept
                                                    for the actor's successor), while the
                                                    actor has no ring for it or the state
                                                    does not fit the ring's slot (ring.py)
  keeper -> terminal
    welcome {pid, custody, sessions: [{s, pid, started, tty, cols, rows, meta, base, acked,
                                       exited, pending, input_end, signals}]}
                                                    (`input_end`, `signals`: what the ring's
                                                    ledger says was done)
                                                    `custody` true: the supervisor's custody
                                                    (a predecessor's sessions) has not
                                                    answered yet; a session missing here may
                                                    still come, with `custody`
    custody {sessions: [...]}                       once custody answered (or failed, or was
                                                    given up on), to a terminal whose welcome
                                                    said `custody`: the sessions that came
                                                    after that welcome, entries as the
                                                    welcome's, their `fds` following as the
                                                    welcome's do; only from then on may the
                                                    terminal take a session it recorded and
                                                    the keeper does not hold for lost
    fds     {s}                                     the session's PTY master and ring ride
                                                    along (SCM_RIGHTS): after a create's `ok`,
                                                    a welcome or `custody`, or a `pass`; the
                                                    actor keeps copies (either process then
                                                    keeps the session alive) and writes input
                                                    to the master itself
    out     {s, end, paused}                        the session's ring holds output up to
                                                    `end` (read it there); `paused`: the
                                                    keeper stopped reading, its window full
    written {s, done}                               the session's queued input is all
                                                    written (or dropped) up to `done`
    exit    {s, code, signal}                       after the last `out` of the session
    ok      {r, ...} / err {r, name, message}       a request's reply
"""

from __future__ import annotations

import array
import contextlib
import mmap
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack
from loguru import logger

from moorage.actors.runtime.custody import close_all, dup_all
from moorage.actors.runtime.loop import Loop

HEADER = struct.Struct(">I")
# The hello's `tok` is trust.token(LINK_TOKEN_NAME): the keeper takes a connection only from a
# process of its own tree, and a stranger never displaces the live link.
LINK_TOKEN_NAME = "ptykeeper.link"
# A keeper's custody answer not there this long after its start is given up (keeper/actor.py):
# a terminal waiting for its sessions to settle waits no longer than this
CUSTODY_GIVE_UP_S = 30.0
MAX_FRAME = 64 * 1024 * 1024  # a chunk of output or input is far smaller; this is a guard
READ_SIZE = 1 << 20
_CTRUNC = int(socket.MSG_CTRUNC)  # (an int: the enum's & costs µs on every read)
IOV_BATCH = 64
MAX_FDS = 16  # passed descriptors taken from one receive


class LinkError(ValueError):
    """The peer sent something that is not a frame of this protocol."""


_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack  # one per process: no setup


def encode(msg: dict[str, Any]) -> bytes:
    body = _pack(msg)
    return HEADER.pack(len(body)) + body


def encode_parts(msg: dict[str, Any]) -> tuple[bytes, bytes]:
    """The frame as (length, body): sent together with sendmsg, a big chunk of output is
    not copied once more just to put four bytes in front of it."""
    body = _pack(msg)
    return HEADER.pack(len(body)), body


class FrameReader:
    """Bytes in, whole messages out; a partial frame is kept for the next feed."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | memoryview) -> list[dict[str, Any]]:
        """Whole messages in what arrived (`data` may be a view of a buffer that is reused
        afterwards: nothing here keeps a reference to it)."""
        if self._buf:
            self._buf += data
            # A big frame comes in many reads: it is parsed (and copied) once it is whole,
            # not at each of them.
            if len(self._buf) < 4:
                return []
            (n,) = HEADER.unpack_from(self._buf, 0)
            if n > self.max_frame:
                raise LinkError(f"frame of {n} bytes is over the {self.max_frame} limit")
            if len(self._buf) - 4 < n:
                return []
            data = bytes(self._buf)
            self._buf.clear()
        # Parsed straight from what was received (memoryview slices: no copies); only an
        # incomplete last frame is kept.
        out = []
        pos = 0
        end = len(data)
        view = memoryview(data)
        try:
            while end - pos >= 4:
                (n,) = HEADER.unpack_from(data, pos)
                if n > self.max_frame:
                    raise LinkError(f"frame of {n} bytes is over the {self.max_frame} limit")
                if end - pos - 4 < n:
                    break
                try:
                    msg = msgpack.unpackb(view[pos + 4 : pos + 4 + n], raw=False,
                                          strict_map_key=True)
                except Exception as exc:
                    raise LinkError(f"undecodable frame: {exc}") from exc
                if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                    raise LinkError("a frame must be a map with a string `t`")
                out.append(msg)
                pos += 4 + n
        finally:
            view.release()
        if pos < end:
            self._buf += data[pos:]
        return out


class _Passing:
    """A frame waiting to be sent with descriptors: duplicates of its own (`still` None,
    closed once sent), or, when none could be made, the caller's, which `still()` says are
    still what the frame names when its turn comes (never closed here)."""

    __slots__ = ("data", "fds", "still")

    def __init__(self, data: bytes, fds: list[int], still: Callable[[], bool] | None) -> None:
        self.data = data
        self.fds = fds
        self.still = still

    def release(self) -> None:
        if self.still is None:
            close_all(self.fds)
        self.fds = []


class Link:
    """One connected socket on the loop: `send(msg)` queues, the loop writes when it can;
    `on_message(msg)` per frame received; `on_close(reason)` once, when it ends."""

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        on_message: Callable[[dict[str, Any]], None],
        on_close: Callable[[str], None],
        on_batch_end: Callable[[], None] | None = None,
        accept_fds: bool = False,
    ) -> None:
        self.loop = loop
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.on_message = on_message
        self.on_close = on_close
        self.on_batch_end = on_batch_end
        # after what waited to be written has all gone (the peer reads again)
        self.on_drained: Callable[[], None] | None = None
        self.reader = FrameReader()
        # Received into one buffer for the link's life: a fresh 1 MiB `recv` per message is
        # an mmap, a page fault, an mremap and a munmap each time, on both ends of every hop.
        # Anonymous memory, not a bytearray (which zero-fills it all): only the pages a
        # receive has reached are the process's, a few KiB on a link of small messages.
        self._rbuf = mmap.mmap(-1, READ_SIZE)
        # Descriptors passed by the peer, in the order their frames come (a frame that says
        # it carries one takes the first); unclaimed ones are closed with the link.
        self._anc = 0
        if accept_fds:
            self.take_passed_fds()
        self.fds: deque[int] = deque()
        # passed descriptors were cut off (MSG_CTRUNC: out of descriptors, or over MAX_FDS)
        # since the last `take_fds` that found too few; `cut_short`: that take's were
        self._cut = False
        self.cut_short = False
        # what waits to be written: frames' bytes, and _Passing where descriptors must ride
        # with the first byte of a frame
        # (what a send took part of goes on as a view: a frame of megabytes sent in pieces
        # is not copied again for each)
        self.out: deque[bytes | memoryview | _Passing] = deque()
        self.out_bytes = 0
        self.closed = False
        loop.add_reader(self.fd, self._readable)

    def take_passed_fds(self) -> None:
        """From now on, descriptors the peer passes are received (until then the kernel
        closes them at each receive)."""
        self._anc = socket.CMSG_SPACE(MAX_FDS * 4)

    def send_fds(self, msg: dict[str, Any], fds: list[int],
                 still: Callable[[], bool] | None = None) -> bool:
        """`msg` with descriptors: the peer gets its own (ours stay open), taken with
        `take_fds(len(fds))` when it handles `msg`.

        Sent at once when nothing waits before it: the kernel takes ours as they are, and
        no descriptor is spent (at the open-file limit, a hand-over of every session must
        still go). What has to wait holds duplicates of its own: the caller may close its
        descriptors meanwhile (a session closed while the socket was full), and their
        numbers be taken by others. With no descriptor left to duplicate, and `still`
        given, it waits with the caller's own, and goes only if `still()` says they are
        the same ones when its turn comes (else the frame is dropped whole). False when it
        could not be sent (the peer may ask for them again)."""
        if self.closed:
            return False
        head, body = encode_parts(msg)
        data = head + body
        if not self.out:
            try:
                n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", fds))])
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self.close(f"send: {exc}")
                return False
            if n == len(data):
                return True
            if n:  # (the descriptors went with the first byte: the rest is plain bytes)
                self.out.append(memoryview(data)[n:])
                self.out_bytes += len(data) - n
                self.loop.add_writer(self.fd, self._writable)
                return True
        try:
            passing = _Passing(data, dup_all(fds), None)
        except OSError as exc:
            if still is None:
                logger.warning("link: {} not sent: its descriptors: {}", msg.get("t"), exc)
                return False
            passing = _Passing(data, list(fds), still)
        self.out.append(passing)
        self.out_bytes += len(data)
        self._writable()
        return True

    def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            return
        head, body = encode_parts(msg)
        size = len(head) + len(body)
        if not self.out:
            try:
                n = self.sock.sendmsg((head, body))
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self.close(f"send: {exc}")
                return
            if n == size:
                return
            self.loop.add_writer(self.fd, self._writable)
            if n >= len(head):
                self.out.append(body[n - len(head) :])
                self.out_bytes += size - n
                return
            head = head[n:]
            size -= n
        self.out.append(head)
        self.out.append(body)
        self.out_bytes += size

    def _writable(self) -> None:
        while self.out:
            first = self.out[0]
            if isinstance(first, _Passing):  # descriptors go with the first byte of these
                data = first.data
                if first.still is not None and not first.still():
                    # (the caller's own, closed or taken for another since: not sent at all)
                    self.out.popleft()
                    self.out_bytes -= len(data)
                    continue
                try:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", first.fds))])
                except BlockingIOError:
                    self.loop.add_writer(self.fd, self._writable)
                    return
                except OSError as exc:
                    self.close(f"send: {exc}")
                    return
                first.release()  # (the peer has its own now)
                self.out_bytes -= n
                if n < len(data):
                    self.out[0] = memoryview(data)[n:]  # sent: the rest is plain bytes
                else:
                    self.out.popleft()
                continue
            batch = []
            for item in self.out:
                if isinstance(item, _Passing) or len(batch) == IOV_BATCH:
                    break
                batch.append(item)
            try:
                n = self.sock.sendmsg(batch)
            except BlockingIOError:
                self.loop.add_writer(self.fd, self._writable)
                return
            except OSError as exc:
                self.close(f"send: {exc}")
                return
            self.out_bytes -= n
            while n:
                head = self.out[0]
                assert not isinstance(head, _Passing)
                if n >= len(head):
                    n -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = memoryview(head)[n:]
                    n = 0
        self.loop.remove_writer(self.fd)
        if self.on_drained is not None and not self.closed:
            self.on_drained()

    def _readable(self) -> None:
        for _ in range(16):  # bounded, so one busy peer cannot starve the loop
            try:
                if self._anc:
                    n, anc, flags, _ = self.sock.recvmsg_into(
                        [self._rbuf], self._anc, socket.MSG_CMSG_CLOEXEC)
                    if anc or flags & _CTRUNC:
                        self._take_fds(anc, flags)
                else:
                    n = self.sock.recv_into(self._rbuf)
            except BlockingIOError:
                break
            except OSError as exc:
                self.close(f"recv: {exc}")
                return
            if not n:
                self.close("peer closed the connection")
                return
            with memoryview(self._rbuf) as view:
                try:
                    msgs = self.reader.feed(view[:n])
                except LinkError as exc:
                    self.close(str(exc))
                    return
            for msg in msgs:
                if self.closed:
                    return
                try:
                    self.on_message(msg)
                except Exception:  # (the frames after it in this read are still handled)
                    logger.exception("link: handling {!r} failed", msg.get("t"))
            if n < READ_SIZE:
                break
        if self.on_batch_end is not None and not self.closed:
            self.on_batch_end()

    def _take_fds(self, anc: list[tuple[int, int, bytes]], flags: int) -> None:
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            # no descriptor free here, or more than MAX_FDS at once: the kernel closed the
            # rest; their frames find none and their sessions write through the peer instead
            self._cut = True
            logger.warning("link: passed descriptors were cut off (MSG_CTRUNC)")

    def take_fds(self, n: int) -> list[int] | None:
        """The next `n` descriptors the peer passed (for the frame that says it carries
        them), or None when fewer came (those are closed; `cut_short` says whether the
        kernel cut them off: a limit, not a fault of the peer's)."""
        if len(self.fds) < n:
            close_all(self.fds)
            self.fds.clear()
            self.cut_short, self._cut = self._cut, False
            return None
        return [self.fds.popleft() for _ in range(n)]

    def drain(self) -> None:
        """Take whatever the peer sent before it went (or before it is replaced)."""
        if not self.closed:
            self._readable()

    def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
        for item in self.out:
            if isinstance(item, _Passing):
                item.release()
        self.out.clear()
        self.out_bytes = 0
        close_all(self.fds)
        self.fds.clear()
        self.on_close(reason)


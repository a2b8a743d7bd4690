"""A real FUSE mount served by a thread of the test, which can stop answering: a stalled
network file system (an NFS server gone, an sshfs whose link dropped) as the kernel shows
it to everyone else. While `stalled`, every call on the mount that reaches the server waits
in the kernel, as it would for the real thing; `resume` answers what waited.

It speaks the FUSE kernel protocol (linux/fuse.h, protocol 7.22) on /dev/fuse for one flat
directory: lookup, getattr, setattr, opendir, readdir, create, unlink, flush and release,
nothing cached by the kernel (every stat asks the server). Mounting needs CAP_SYS_ADMIN and
/dev/fuse: `available()` says whether this machine has both.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import threading
import time
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
ROOT = 1  # FUSE_ROOT_ID

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ...
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr: 88 bytes
ENTRY = struct.Struct("<QQQQII")  # nodeid, generation, entry_valid, attr_valid, nsecs
ATTR_OUT = struct.Struct("<QII")  # attr_valid, attr_valid_nsec, dummy
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding
INIT_OUT = struct.Struct("<IIIIHHI")  # major, minor, max_readahead, flags, ..., max_write
DIRENT = struct.Struct("<QQII")  # ino, off, namelen, type

LOOKUP, FORGET, GETATTR, SETATTR, UNLINK = 1, 2, 3, 4, 10
RELEASE, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 18, 25, 26, 27, 28, 29
INTERRUPT, CREATE, DESTROY, BATCH_FORGET = 36, 35, 38, 42
NO_REPLY = {FORGET, INTERRUPT, BATCH_FORGET}


def available() -> str | None:
    """Why no FUSE mount can be made here, or None when one can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if os.geteuid() != 0:
        return "mounting needs root (CAP_SYS_ADMIN)"
    return None


class StallingFuse:
    """One flat directory at `mountpoint`, served until `close`."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.files: dict[str, int] = {}  # name -> node id
        self.nodes: dict[int, tuple[str, int]] = {ROOT: ("", stat.S_IFDIR | 0o755)}
        self.requests = 0
        self.waiting = threading.Event()  # set while stalled and a request is unanswered
        self._go = threading.Event()
        self._go.set()
        self._stall_after: int | None = None
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if _libc.mount(b"moorage-test", os.fsencode(mountpoint), b"fuse", 0, opts) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount fuse on {mountpoint}: {os.strerror(err)}")
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="fuse-server", daemon=True)
        self._thread.start()

    def stall(self) -> None:
        """Stop answering: from now on every call that reaches the server waits."""
        self._go.clear()

    def stall_after_flush(self) -> None:
        """Stop answering once the next FLUSH is answered: a file created through the
        mount is there, its close returned, and its creation's event on its way, but
        nothing can stat it any more."""
        self._stall_after = FLUSH

    def resume(self) -> None:
        self._stall_after = None
        self.waiting.clear()
        self._go.set()

    def close(self) -> None:
        self.resume()
        self._closing = True
        _libc.umount2(os.fsencode(self.mountpoint), MNT_DETACH)
        self._thread.join(10)
        with contextlib.suppress(OSError):
            os.close(self._fd)

    # --- the server --------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                req = os.read(self._fd, 1 << 18)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                return  # ENODEV: unmounted
            if not self._go.is_set():
                self.waiting.set()
                self._go.wait()
            if self._closing and not req:
                return
            self.requests += 1
            _, opcode, unique, node, *_ = IN_HEADER.unpack_from(req)
            body = req[IN_HEADER.size:]
            if opcode in NO_REPLY:
                continue
            try:
                out = self._answer(opcode, node, body)
            except OSError as exc:
                self._reply(unique, -(exc.errno or errno.EIO))
                continue
            self._reply(unique, 0, out)
            if opcode == self._stall_after:
                self.stall()

    def _reply(self, unique: int, error: int, payload: bytes = b"") -> None:
        with contextlib.suppress(OSError):  # the caller was interrupted meanwhile
            os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique)
                     + payload)

    def _attr(self, node: int) -> bytes:
        if node not in self.nodes:
            raise OSError(errno.ENOENT, "no such node")
        mode = self.nodes[node][1]
        now = int(time.time())
        return ATTR.pack(node, 0, 0, now, now, now, 0, 0, 0, mode,
                         2 if stat.S_ISDIR(mode) else 1, 0, 0, 0, 4096, 0)

    def _entry(self, node: int) -> bytes:
        return ENTRY.pack(node, 0, 0, 0, 0, 0) + self._attr(node)  # nothing cached

    def _answer(self, opcode: int, node: int, body: bytes) -> bytes:
        if opcode == INIT:
            _major, _minor, readahead, _flags = struct.unpack_from("<IIII", body)
            return INIT_OUT.pack(7, 22, readahead, 0, 16, 12, 128 << 10)
        if opcode == LOOKUP:
            name = body.split(b"\0", 1)[0].decode()
            if node != ROOT or name not in self.files:
                raise OSError(errno.ENOENT, name)
            return self._entry(self.files[name])
        if opcode in (GETATTR, SETATTR):
            return ATTR_OUT.pack(0, 0, 0) + self._attr(node)
        if opcode == OPENDIR:
            return OPEN_OUT.pack(0, 0, 0)
        if opcode == READDIR:
            _fh, offset, size = struct.unpack_from("<QQI", body)
            out = b""
            names = sorted(self.files)
            for i, name in enumerate(names[offset:], offset):
                raw = name.encode()
                ent = DIRENT.pack(self.files[name], i + 1, len(raw), stat.S_IFREG >> 12) + raw
                ent += b"\0" * (-len(ent) % 8)
                if len(out) + len(ent) > size:
                    break
                out += ent
            return out
        if opcode == CREATE:
            _flags, mode = struct.unpack_from("<II", body)
            name = body[16:].split(b"\0", 1)[0].decode()
            if name not in self.files:
                new = max(self.nodes) + 1
                self.nodes[new] = (name, stat.S_IFREG | (mode & 0o777))
                self.files[name] = new
            return self._entry(self.files[name]) + OPEN_OUT.pack(0, 0, 0)
        if opcode == UNLINK:
            name = body.split(b"\0", 1)[0].decode()
            if node != ROOT or name not in self.files:
                raise OSError(errno.ENOENT, name)
            del self.nodes[self.files.pop(name)]
            return b""
        if opcode in (RELEASE, RELEASEDIR, FLUSH, DESTROY):
            return b""
        raise OSError(errno.ENOSYS, f"opcode {opcode}")

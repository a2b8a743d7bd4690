"""Which file system a path lives on: to refuse watching the ones inotify cannot see, and to
keep the loop away from the ones that may not answer (MountTable, below).

procfs, sysfs and their kin make their files up when they are read: nothing writes them, so
inotify reports nothing when they change, and a walk of /proc races with every process that
exits (entries vanish between readdir and stat). A watch there would promise events that
never come, so `fs.watch` refuses it up front, naming the file system.

The answer comes from /proc/self/mountinfo: its third field is the device (major:minor) that
stat reports as st_dev for every file of that mount, and the field after the " - "
separator is the file system type. Read afresh on each question (mounts come and go); a
question is one `fs.watch`, not a hot path.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from moorage.actors.watcher.workers import Job, Offload
from moorage.protocol.errors import MoorageError, fail

T = TypeVar("T")

# Kernel file systems whose contents change without inotify events.
PSEUDO = frozenset({
    "proc", "sysfs", "debugfs", "tracefs", "securityfs", "pstore", "bpf", "configfs",
    "fusectl", "binfmt_misc", "efivarfs", "nsfs", "cgroup", "cgroup2", "rpc_pipefs",
})
MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """A mount point as mountinfo writes it: space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(device major:minor, mount point, file system type) of each mount (empty if the file
    cannot be read)."""
    out = []
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split(" ")
                _, sep, rest = line.partition(" - ")
                if len(fields) > 4 and sep:
                    out.append((fields[2], _unescape(fields[4]), rest.split(" ", 1)[0]))
    except OSError:
        return []
    return out


def fs_type(dev: int, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system whose device is `dev` (st_dev), or None when unknown."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    return next((kind for device, _, kind in _mounts(mountinfo) if device == want), None)


def pseudo_refusal(real: str, path: str) -> MoorageError | None:
    """The error for watching `real` when it is on a pseudo file system, else None."""
    try:
        dev = os.stat(real).st_dev
    except OSError:
        return None  # the caller's own checks classify it
    kind = fs_type(dev)
    if kind not in PSEUDO:
        return None
    return fail("bad_args", f"{path}: on a {kind} pseudo file system, whose files change "
                "without inotify events: not watched",
                detail={"path": path, "reason": "pseudo_filesystem", "fs_type": kind})


# File systems whose calls may wait on a network or a user-space server for as long as it
# takes (a stalled NFS server, an sshfs whose link dropped): a stat, an open or a read there
# may never return. A type ending in ".*" names a family (fuse.sshfs, fuse.rclone, ...).
SLOW_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
              "afs", "davfs", "fuse", "fuse.*")
# FUSE file systems over local storage, left out of a family unless named exactly: a rootless
# container's whole root is fuse-overlayfs, which would otherwise send every file op to the
# remote workers and leave the cache unused (fuseblk, ntfs-3g and exfat on a local disk, is
# not in the family to begin with).
LOCAL_FUSE_TYPES = frozenset({"fuse.fuse-overlayfs", "fuse.bindfs", "fuse.lxcfs",
                              "fuse.squashfuse", "fuse.portal"})
MOUNTS_MAX_AGE_S = 1.0


def mount_points(mountinfo: str = MOUNTINFO) -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount in `mountinfo` (empty if unreadable)."""
    return [(point, kind) for _, point, kind in _mounts(mountinfo)]


def mount_of(path: str, mountinfo: str = MOUNTINFO) -> tuple[str, str] | None:
    """The deepest mount holding absolute `path`: (mount point, file system type)."""
    probe = path.rstrip("/") + "/"
    held = [(p, t) for p, t in mount_points(mountinfo) if probe.startswith(p.rstrip("/") + "/")]
    return max(held, key=lambda m: len(m[0]), default=None)


class MountTable:
    """Which paths lie on a slow file system (SLOW_TYPES), by the mount table.

    A path belongs to the deepest mount point that contains it, so a local mount inside a
    remote tree is local. The table is read again when it is more than `max_age_s` old
    (mounts come and go; reading it costs some tens of µs), only when asked; a machine with
    no slow mount (the usual one) answers each question with a comparison. Symlinks are not
    followed: the question is about the path as given."""

    def __init__(self, slow_types: Iterable[str] = SLOW_TYPES, mountinfo: str = MOUNTINFO,
                 max_age_s: float = MOUNTS_MAX_AGE_S) -> None:
        types = tuple(slow_types)
        self._exact = frozenset(t for t in types if not t.endswith(".*"))
        self._families = tuple(t[:-1] for t in types if t.endswith(".*"))  # "fuse."
        self.mountinfo = mountinfo
        self.max_age_s = max_age_s
        self._read_at = -math.inf
        # (mount point + "/", slow?) for every mount under or at a slow one, deepest first;
        # empty when nothing is slow
        self._points: tuple[tuple[str, bool], ...] = ()

    def is_slow_type(self, fs_type: str) -> bool:
        if fs_type in self._exact:
            return True
        return fs_type not in LOCAL_FUSE_TYPES and fs_type.startswith(self._families)

    def _read(self) -> None:
        mounts = [(point.rstrip("/") + "/", self.is_slow_type(kind))
                  for point, kind in mount_points(self.mountinfo)]
        slow = [p for p, s in mounts if s]
        # Only what can change an answer: the slow mounts and any mount below one of them.
        kept = {(p, s) for p, s in mounts if s or any(p.startswith(q) for q in slow)}
        self._points = tuple(sorted(kept, key=lambda m: len(m[0]), reverse=True))

    def slow_check(self) -> Callable[[str], bool] | None:
        """`slow`, or None while no slow file system is mounted: a caller that asks about
        many paths at once (the pipeline, each event of a flush) then asks nothing."""
        self._refresh()
        return self.slow if self._points else None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._read_at > self.max_age_s:
            self._read_at = now
            self._read()

    def slow(self, path: str) -> bool:
        """Is absolute `path` on a slow file system (as far as the mount table says)?"""
        self._refresh()
        if not self._points:
            return False
        probe = path.rstrip("/") + "/"
        for point, is_slow in self._points:
            if probe.startswith(point):
                return is_slow
        return False


class DirProbe(Generic[T]):
    """`look` (`os.path.isdir` unless given another, as the liveness check's directory
    identity) for questions the loop asks again and again (the liveness check, every
    second): a path on a slow file system is looked at on a remote worker, never on the
    loop, and the answer is what that look last found (None until one has: "not known
    yet"). One look per path at a time; a look the workers cannot take (all busy behind a
    stalled mount) is simply not made, and asked for again next time."""

    def __init__(self, slow: Callable[[str], bool], remote: Offload,
                 check: Callable[[str], T] = os.path.isdir) -> None:  # type: ignore[assignment]
        self.slow = slow
        self.remote = remote
        self.check = check
        self.known: dict[str, T] = {}
        self.out: set[str] = set()

    def look(self, path: str) -> T | None:
        check = self.check
        if not self.slow(path):
            return check(path)
        if path not in self.out:
            try:
                job = self.remote(lambda: check(path), lambda v: v)
            except MoorageError:
                return self.known.get(path)
            self.out.add(path)
            job.then(lambda j: self._found(path, j))
        return self.known.get(path)

    def _found(self, path: str, job: Job) -> None:
        self.out.discard(path)
        if job.error is None:
            self.known[path] = job.value

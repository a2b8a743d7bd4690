"""Which file system a path lives on, to refuse watching the ones inotify cannot see.

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

import os

from moorage.protocol.errors import MoorageError, fail

# Kernel file systems whose contents change without inotify events.
PSEUDO = frozenset({
    "proc", "sysfs", "debugfs", "tracefs", "securityfs", "pstore", "bpf", "configfs",
    "fusectl", "binfmt_misc", "efivarfs", "nsfs", "cgroup", "cgroup2", "rpc_pipefs",
})
MOUNTINFO = "/proc/self/mountinfo"


def fs_type(dev: int, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system whose device is `dev` (st_dev), or None when unknown."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 3 and fields[2] == want:
                    _, sep, rest = line.partition(" - ")
                    return rest.split(" ", 1)[0] if sep else None
    except OSError:
        return None
    return None


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

"""The instance's files in its runtime dir, kept from tmp cleaners while the tree runs, and
removed at its end only while they are still this tree's.

The runtime dir is `$XDG_RUNTIME_DIR/moorage/NAME`, whose files the XDG spec lets the system
clean up unless they are touched every 6 hours or carry the sticky bit, or, without it,
`/tmp/moorage-UID/NAME`, which systemd-tmpfiles and tmpreaper age out. A socket removed there is
an actor no client can reach again; the lock and `tree.json` removed let a second `moorage up`
start another tree on the instance, whose start removes the first one's sockets, and the first
tree's end then removed the second's lock, connection file and sockets (a tree of ten
processes nobody could find). So:

  keep            the root marks every file of the instance sticky (systemd-tmpfiles leaves
                  such files alone, as the XDG spec asks of cleaners) and touches it (atime and
                  mtime, for cleaners that go by age), once the tree is ready and every
                  KEEP_EVERY_S after: a socket an actor's restart made anew is marked at the
                  next pass, hours before any cleaner's age. The lock is marked once, as it is
                  taken (launch.lock_instance), and never touched after: its ctime is part of
                  the tree's identity (watcher/state.tree_identity: a watcher restarted in the
                  same tree takes its saved watches back by it)
  still_ours      at its end the root removes the instance's files only while the lock there
                  is the file it holds (or none is there): a lock of another inode is another
                  tree's, and so are the files beside it

A socket removed all the same (by hand) is not bound again: that actor is unreachable until it
restarts, and `moorage down` stops the tree by its lock's pid.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from loguru import logger

from moorage.actors.runtime.statefile import SUCCESSION
from moorage.protocol.endpoints import LOCK_FILE

KEEP_EVERY_S = 3600.0


def keep(runtime_dir: Path) -> int:
    """Mark this user's files in `runtime_dir` (and its succession records) sticky and touch
    them; how many were marked anew. Links and what another user owns are left alone."""
    marked = 0
    uid = os.geteuid()
    for folder in (runtime_dir, runtime_dir / SUCCESSION):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid != uid or stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode) \
                        or (folder == runtime_dir and e.name == LOCK_FILE):
                    continue
                if not st.st_mode & stat.S_ISVTX:
                    os.chmod(e.path, stat.S_IMODE(st.st_mode) | stat.S_ISVTX)
                    marked += 1
                os.utime(e.path)
            except OSError as exc:  # (gone meanwhile: an actor's socket made anew)
                logger.debug("runtime file {} not kept: {}", e.path, exc)
    return marked


def still_ours(runtime_dir: Path, lock_fd: int) -> bool:
    """Are the instance's files this tree's to remove: is the lock in `runtime_dir` the one
    `lock_fd` holds, or none at all? False when another file stands there: another tree's."""
    try:
        there = os.stat(runtime_dir / LOCK_FILE)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    held = os.fstat(lock_fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

"""One reader of /proc/<pid>/stat, for all who look at another process's state, session or
start time (the supervisor's beat check, the keeper's clean-up, the resource sampler)."""

from __future__ import annotations

import os

STATE, PPID, SESSION, START = 0, 1, 3, 19  # indexes in stat_fields (proc(5)'s 3, 4, 6, 22)


def stat_fields(pid: int | str) -> list[bytes]:
    """/proc/<pid>/stat from the state field on (index 0 = proc(5)'s field 3); OSError when no
    such process runs. The comm field may hold spaces and parentheses: the state follows the
    last ')'."""
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return data[data.rindex(b")") + 2 :].split()

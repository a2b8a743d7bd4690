"""Where an instance's sockets live: one private directory per instance name.

Paths never change across restarts, so a ZeroMQ peer reconnects to a restarted actor by
itself and what it sent meanwhile waits in its queue.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_INSTANCE = "default"


def runtime_dir(instance: str | None = None, env: dict[str, str] | None = None) -> Path:
    """`--instance NAME`, else MOORAGE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/moorage/NAME,
    else /tmp/moorage-<uid>/NAME."""
    env = os.environ if env is None else env
    if instance is None and env.get("MOORAGE_RUNTIME_DIR"):
        return Path(env["MOORAGE_RUNTIME_DIR"])
    name = instance or DEFAULT_INSTANCE
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad instance name {name!r}")
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "moorage" / name
    return Path(f"/tmp/moorage-{os.getuid()}") / name


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and a private parent) with mode 0700; refuse one owned by someone else."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in (path, path.parent):
        st = p.stat()
        if p == path or p.name.startswith("moorage"):
            if st.st_uid != os.getuid():
                raise PermissionError(f"{p} is owned by uid {st.st_uid}, not {os.getuid()}")
            if st.st_mode & 0o077:
                os.chmod(p, 0o700)
    return path


def rpc(rdir: Path | str, name: str) -> str:
    return f"ipc://{rdir}/{name}.rpc"


def pub(rdir: Path | str, name: str) -> str:
    return f"ipc://{rdir}/{name}.pub"


def metrics_in(rdir: Path | str) -> str:
    return f"ipc://{rdir}/metrics.in"

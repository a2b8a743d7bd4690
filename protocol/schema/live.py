"""The live check: every reply a Python client receives, held against `ops.json`.

Turned on by naming the schema in `$MOORAGE_SCHEMA_CHECK` (the test suite does, for itself and
every process it starts); off, the client does not import this module's work at all. A reply
that breaks its op's declaration (a result of another shape, a wrong number of attachments,
an error the op does not declare) is a violation: written as one JSON line to the file named
by `$MOORAGE_SCHEMA_LOG` (several processes append to one file) or else kept in `violations`.
The reply still goes to its caller unchanged: the check observes, it never alters an answer.
Ops the schema does not list (a test's own fake actors) are not checked. With
`$MOORAGE_SCHEMA_SEEN` naming a file, each process also appends there, when it exits, the ops
it saw answered (to find the ops no test reaches).
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

from moorage.protocol.envelope import Reply
from moorage.protocol.schema.validate import Validator

ENV_SCHEMA = "MOORAGE_SCHEMA_CHECK"
ENV_LOG = "MOORAGE_SCHEMA_LOG"
ENV_SEEN = "MOORAGE_SCHEMA_SEEN"
_shared: dict[tuple[str, str | None], ReplyCheck] = {}  # one per process and schema


class ReplyCheck:
    """Checks replies by op; validators are built on first use of each op."""

    def __init__(self, schema_path: Path | str, log_path: Path | str | None = None) -> None:
        doc = json.loads(Path(schema_path).read_text())
        self.ops: dict[str, dict[str, Any]] = doc["ops"]
        self.runtime_errors = frozenset(doc["runtime_errors"])
        self.log_path = Path(log_path) if log_path else None
        self.violations: list[dict[str, Any]] = []
        self._validators: dict[str, Validator] = {}
        self.seen: set[tuple[str, str, bool]] = set()  # (actor, op, ok) checked

    def __call__(self, actor: str, op: str, reply: Reply) -> None:
        spec = self.ops.get(op)
        if spec is None:
            return
        self.seen.add((actor, op, reply.ok))
        if reply.ok:
            problems = self._validator(op, spec).problems(reply.body)
            lo, hi = spec["attachments"]["reply"]["min"], spec["attachments"]["reply"]["max"]
            n = len(reply.attachments)
            if n < lo or (hi is not None and n > hi):
                problems.append(f"{n} attachments; the op answers {lo}..{hi}")
        else:
            name = reply.body.get("name") if isinstance(reply.body, dict) else None
            if name in self.runtime_errors or name in spec["errors"]:
                return
            problems = [f"answered error {name!r}, which {op} does not declare"]
        if problems:
            self._record(actor, op, problems)

    def _validator(self, op: str, spec: dict[str, Any]) -> Validator:
        v = self._validators.get(op)
        if v is None:
            v = self._validators[op] = Validator(spec["result"])
        return v

    def write_seen(self, path: Path | str) -> None:
        """Append what this process saw answered, one JSON line."""
        if self.seen:
            _append(path, json.dumps(sorted(self.seen)))

    def _record(self, actor: str, op: str, problems: list[str]) -> None:
        # Short (a few hundred bytes): one O_APPEND write of it is not interleaved with another
        # process's line.
        entry = {"pid": os.getpid(), "actor": actor, "op": op,
                 "problems": [p[:300] for p in problems[:3]]}
        self.violations.append(entry)
        if self.log_path is None:
            return
        _append(self.log_path, json.dumps(entry))


def _append(path: Path | str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def from_env() -> ReplyCheck | None:
    """The check the environment asks for, or None (the client then never calls one); one
    per process, shared by its clients."""
    path = os.environ.get(ENV_SCHEMA)
    if not path:
        return None
    key = (path, os.environ.get(ENV_LOG))
    check = _shared.get(key)
    if check is None:
        check = _shared[key] = ReplyCheck(*key)
        seen = os.environ.get(ENV_SEEN)
        if seen:
            atexit.register(check.write_seen, seen)
    return check

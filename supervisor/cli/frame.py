"""One frame of `moorage top`: what a refresh found, and the service rows joined with the
clients' rows for the same op (also what `moorage metrics` shows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.protocol.client._latency import pushed_op

CLIENT_PREFIX = "client."


# --- service time beside client time -------------------------------------------------------


def split_client_row(row: dict[str, Any]) -> tuple[str, str, str] | None:
    """(client name, actor, op) of a row pushed by a client, or None for an actor's row."""
    if not row["actor"].startswith(CLIENT_PREFIX) or "/" not in row["op"]:
        return None
    actor, _, op = row["op"].partition("/")
    return row["actor"][len(CLIENT_PREFIX):], actor, op


def join_clients(query: dict[str, Any], op: str | None = None) -> dict[str, Any]:
    """`metrics.query`'s reply with each actor row given `clients`: {name: {lifetime, window}}
    of the clients' rows for the same (actor, op). `services` are the actors' rows, `clients`
    all client rows (with `client`, `target_actor`, `target_op`, and `matched`: whether an
    actor row for that op exists); `op` narrows both."""
    services, clients = [], []
    by_target: dict[str, dict[str, Any]] = {}
    for row in query["ops"]:
        split = split_client_row(row)
        if split is None:
            if op is None or row["op"] == op:
                services.append({**row, "clients": {}})
                by_target[pushed_op(row["actor"], row["op"])] = services[-1]["clients"]
            continue
        name, actor, target = split
        if op is None or target == op:
            clients.append({**row, "client": name, "target_actor": actor, "target_op": target})
    for c in clients:
        slot = by_target.get(c["op"])
        c["matched"] = slot is not None
        if slot is not None:
            slot[c["client"]] = {"lifetime": c["lifetime"], "window": c["window"]}
    return {**query, "services": services, "clients": clients}


# --- one frame's data ----------------------------------------------------------------------


@dataclass
class Frame:
    """What one refresh found; an entry is None when its actor is absent from the tree, and
    `errors[actor]` says why one that should have answered did not."""

    at: float
    tree: dict[str, Any] | None = None
    level: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    targets: dict[str, list[float | None]] = field(default_factory=dict)  # op -> [p50, p99]
    latency_factor: float = 2.0
    runtime_dir: Path | None = None
    interval: float = 1.0


def tree_has(tree: dict[str, Any] | None, cid: str) -> bool:
    return tree is not None and any(
        ch["id"] == cid or tree_has(ch.get("tree"), cid) for ch in tree.get("children", []))

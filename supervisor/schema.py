"""One schema for the whole configuration document, checked at `moorage up` before anything
starts: an unknown key or a value of the wrong type is a ConfigError naming its path
(`actor.resource.memory_budget_mb: must be a number, got 'lots'`), never a child that crash-
loops on it later.

The tables are TypedDicts (every key optional: the actors own the defaults); `check` walks a
value against a type: int (not bool), float (an int is taken; nan and inf are not), bool, str,
Literal, list[T], dict[str, T], a union, or a nested table. The tree itself (`supervisor`,
`children`) is read by spec.py, which names its keys' paths the same way. An `[actor.<id>]`
table is checked against the schema of the class that child starts (ACTOR_TABLES); a child of
a class this package does not ship (allowed with --allow-external-actors) takes the runtime's
keys and any others.
"""

from __future__ import annotations

import math
import types
from typing import Any, Literal, TypedDict, Union, get_args, get_origin, get_type_hints

from moorage.supervisor.spec import ConfigError, SupervisorSpec

Number = float  # an int is taken where a float is asked


class RuntimeTable(TypedDict, total=False):
    """What every actor's runtime reads (actors/runtime/actor.py, process.py)."""

    timeouts: dict[str, int]
    targets: dict[str, list[Number]]
    reply_cache_entries: int
    reply_cache_bytes: int
    queue_limit: int
    busy_retry_ms: int
    shed_below_quality: int
    shed_retry_ms: int
    pub_hwm: int
    retention_messages: int
    retention_bytes: int
    push_metrics: bool
    metrics_interval_s: Number
    log_level: str
    io_threads_sched: Literal["batch", "normal"]


class SloObjectives(TypedDict, total=False):
    availability: Number
    error_rate: Number
    p99_us: int
    recovery_s: Number
    p99_exclude: list[str]


class MetricsTable(RuntimeTable, total=False):
    window_s: Number
    bucket_s: Number
    max_keys: int
    max_client_keys: int
    alert_history: int
    alert_min_samples: int
    alert_failure_rate: Number
    alert_latency_factor: Number
    alert_clear_ratio: Number
    supervisor: str
    slo_file: str
    slo_save_s: Number
    probe_timeout_s: Number
    rto_s: dict[str, Number]
    rto_default_s: Number
    slo: SloObjectives


class ResourceTable(RuntimeTable, total=False):
    interval_s: Number
    calm_interval_s: Number
    calm_after_samples: int
    memory_budget_mb: Number
    memory_metric: Literal["rss", "pss", "pss_tracked"]
    pss_every: int
    cpu_budget_cores: Number
    cpu_weight: Number
    cpu_samples: int
    system_reserve: Number
    margin: int
    up_samples: int
    down_samples: int
    quality_up_samples: int
    kill_runaways: bool
    kill_after_samples: int
    runaway_min_share: Number
    persist_after_samples: int
    shed_nonessential: bool
    restore_level: Literal["normal", "moderate", "high", "critical"]
    restore_after_samples: int
    quality_file: bool
    tell_timeout_s: Number
    status_timeout_s: Number
    rescan_every: int
    supervisor: str


class ParserTable(RuntimeTable, total=False):
    max_streams: int
    max_streams_per_session: int
    max_buffer: int
    max_feed_bytes: int
    max_events_per_feed: int
    idle_timeout_s: Number
    pressure_idle_s: Number


class WatchEntry(TypedDict, total=False):
    path: str
    recursive: bool
    exclude: list[str]


class RetryTable(TypedDict, total=False):
    retries: int
    initial_ms: Number
    factor: Number
    max_ms: Number


class WatcherTable(RuntimeTable, total=False):
    roots: list[str]
    watch: list[str | WatchEntry]
    settle_ms: Number
    buffer_max: int
    journal_max: int
    chunk: int
    cache_max_bytes: int
    cache_max_file_bytes: int
    max_read_bytes: int
    list_max: int
    list_max_scanned: int
    list_loop_entries: int
    slow_fs_types: list[str]
    remote_threads: int
    remote_queue: int
    retry: RetryTable
    liveness_s: Number
    health_interval_s: Number
    health_timeout_s: Number
    poll_interval_s: Number
    max_polled_subtrees: int
    checkpoint_s: Number
    resync_backoff_max_s: Number
    io_threads: int
    io_queue: int
    walk_queue: int
    write_bytes_in_flight: int
    switch_interval_s: Number
    stat_ahead: bool
    state_dir: str


class TerminalTable(RuntimeTable, total=False):
    keeper: str
    shells: list[str]
    default_shell: str
    term: str
    integration_detect_ms: int
    quiet_ms: int
    output_coalesce_ms: int
    exec_timeout_ms: int
    scrollback_bytes: int
    max_output_bytes: int
    keeper_wait_ms: int
    idle_close_s: Number
    closed_stream_keep_s: Number
    ack_bytes: int
    resume_wait_ms: int
    republish_bytes: int
    consumer_timeout_ms: int
    parse: Literal["actor", "local"]
    parser: str
    parse_timeout_ms: int
    parse_feed_bytes: int
    parse_lag_bytes: int
    parse_retry_ms: int
    parse_retry_max_ms: int


class KeeperTable(RuntimeTable, total=False):
    window_bytes: int
    scrollback_bytes: int
    create_per_turn: int
    keep_bytes: int
    input_limit_bytes: int
    read_batch_bytes: int
    stop_grace_ms: int
    close_grace_ms: int


ACTOR_TABLES: dict[str, type] = {
    "moorage.actors.metrics.actor:MetricsActor": MetricsTable,
    "moorage.actors.resource.actor:ResourceActor": ResourceTable,
    "moorage.actors.parser.actor:ParserActor": ParserTable,
    "moorage.actors.watcher.actor:WatcherActor": WatcherTable,
    "moorage.actors.terminal.actor:TerminalActor": TerminalTable,
    "moorage.actors.terminal.keeper.actor:PtyKeeper": KeeperTable,
}


class LifecycleTable(TypedDict, total=False):
    """`[lifecycle]`: life beside an editor (supervisor/lifecycle.py)."""

    grace_s: Number  # orphaned this long (the editor gone, nobody adopted): the tree stops


class ListenTable(TypedDict, total=False):
    """Remote mode: `endpoint = "tcp://HOST:PORT"` (CURVE always; PROTOCOL.md "Remote")."""

    endpoint: str


class Document(TypedDict, total=False):
    """The top level. `supervisor` and `children` are spec.py's; `actor` is checked per child."""

    supervisor: dict[str, Any]
    children: list[Any]
    actor: dict[str, dict[str, Any]]
    targets: dict[str, list[Number]]
    timeouts: dict[str, int]
    lifecycle: LifecycleTable
    listen: ListenTable


# --- checking a value against a type ------------------------------------------------------


def _describe(t: Any) -> str:
    if t is Any:
        return "anything"
    if t is float:
        return "a number"
    if t is int:
        return "an integer"
    if t is bool:
        return "true or false"
    if t is str:
        return "a string"
    origin = get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(t))
    if origin is list:
        return f"a list of {_describe(get_args(t)[0]).removeprefix('a ')}s"
    if origin is dict:
        return "a table"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(t))
    if _is_table(t):
        return "a table"
    return getattr(t, "__name__", str(t))


def _is_table(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, dict) and hasattr(t, "__total__")


def _fits(value: Any, t: Any) -> bool:
    try:
        check(value, t, "")
    except ConfigError:
        return False
    return True


def check(value: Any, t: Any, where: str) -> None:
    """ConfigError naming `where` (and the key below it) if `value` is not a `t`."""
    if t is Any:
        return
    if t is bool:
        ok = type(value) is bool
    elif t is int:
        ok = type(value) is int
    elif t is float:
        ok = type(value) in (int, float)
        if ok and not math.isfinite(value):  # TOML has nan and inf; no setting means them
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    elif t is str:
        ok = type(value) is str
    elif _is_table(t):
        check_table(value, t, where)
        return
    else:
        origin, args = get_origin(t), get_args(t)
        if origin is Literal:
            ok = value in args and type(value) is type(args[0])
        elif origin is list:
            if type(value) is not list:
                ok = False
            else:
                for i, item in enumerate(value):
                    check(item, args[0], f"{where}[{i}]")
                return
        elif origin is dict:
            if type(value) is not dict:
                ok = False
            else:
                for k, item in value.items():
                    check(item, args[1], f"{where}.{k}")
                return
        elif origin in (Union, types.UnionType):
            ok = any(_fits(value, a) for a in args)
            if not ok:  # a table alternative names the deeper key that is wrong
                for a in args:
                    if _is_table(a) and type(value) is dict:
                        check_table(value, a, where)
        else:
            raise TypeError(f"schema type {t!r} not supported")
    if not ok:
        raise ConfigError(f"{where}: must be {_describe(t)}, got {value!r:.80}")


def check_table(value: Any, table: type, where: str, extra_ok: bool = False) -> None:
    if type(value) is not dict:
        raise ConfigError(f"{where}: must be a table, got {value!r:.80}")
    hints = get_type_hints(table)
    for k, v in value.items():
        path = f"{where}.{k}" if where else str(k)
        if k not in hints:
            if extra_ok:
                continue
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(hints))})")
        check(v, hints[k], path)


# --- the document ----------------------------------------------------------------------------


def check_document(doc: dict[str, Any], tree: SupervisorSpec,
                   user: dict[str, Any] | None = None) -> None:
    """The whole merged document against the schema (its top level already checked with
    `check_table(doc, Document, "")`); `tree` is spec.py's reading of it. An `[actor.<id>]`
    table for a child the tree does not have is an error when the user's file (`user`) has
    it; the embedded default's tables for its own children are left unused by a tree that
    replaces them."""
    ids = {c.id: c for _, c in tree.walk()}
    users = (user or {}).get("actor") or {}
    for cid, table in (doc.get("actor") or {}).items():
        child = ids.get(cid)
        if child is None and cid not in users:
            continue
        if child is None:
            raise ConfigError(f"actor.{cid}: no child {cid!r} in the tree (children: "
                              f"{', '.join(sorted(ids))})")
        if child.supervisor is not None:
            raise ConfigError(f"actor.{cid}: {cid!r} is a supervisor; its settings go in "
                              "its [[children]] entry")
        schema = ACTOR_TABLES.get(child.start)
        check_table(table, schema or RuntimeTable, f"actor.{cid}", extra_ok=schema is None)
    for _, child in tree.walk():  # an inline `config = {...}` of a [[children]] entry too
        if child.supervisor is None:
            schema = ACTOR_TABLES.get(child.start)
            check_table(child.config, schema or RuntimeTable, f"{child.id}.config",
                        extra_ok=schema is None)
    for op, t in (doc.get("targets") or {}).items():
        if not 2 <= len(t) <= 3 or not all(x > 0 for x in t):
            raise ConfigError(f"targets.{op}: must be [p50_us, p99_us] or [p50_us, p99_us, "
                              f"p999_us], each > 0, got {t!r}")
    for op, ms in (doc.get("timeouts") or {}).items():
        if not ms > 0:
            raise ConfigError(f"timeouts.{op}: must be milliseconds > 0, got {ms!r}")
    grace = (doc.get("lifecycle") or {}).get("grace_s", 60)
    if not grace >= 0:
        raise ConfigError(f"lifecycle.grace_s: must be seconds >= 0, got {grace!r}")

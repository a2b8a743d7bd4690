"""One schema for the whole configuration document, checked at `moorage up` before anything
starts: an unknown key or a value of the wrong type is a ConfigError naming its path
(`actor.resource.memory_budget_mb: must be a number, got 'lots'`), never a child that crash-
loops on it later.

The tables are TypedDicts (every key optional: the actors own the defaults); `check` walks a
value against a type: int (not bool), float (an int is taken; nan and inf are not), bool, str,
Literal, list[T], dict[str, T], a union, a nested table, or `Annotated[T, Min(lo)]` (a value
below `lo` is refused as the actor would refuse it at start). `Annotated[str, ChildRef(...)]`
names another child of the tree: checked against the tree (`check_document`), so a terminal
whose keeper is misspelt is refused before it starts rather than failing every request. The
tree itself (`supervisor`, `children`) is read by spec.py, which names its keys' paths the
same way. An `[actor.<id>]` table is checked against the schema of the class that child
starts (ACTOR_TABLES); a child of a class this package does not ship (allowed with
--allow-external-actors) takes the runtime's keys and any others, and any fallback names.
A child of ours may name only the fallbacks its class declares (its `fallbacks` attribute).

What passes is what can be started: the document goes whole to every nested supervisor and,
with the shared tables, to every actor, each in one datagram to its zygote; so `targets` and
`timeouts` name at most MAX_TABLE_ENTRIES ops and the document, packed, is at most
MAX_PACKED_BYTES.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict, Union, get_args, get_origin, get_type_hints

import msgpack

from moorage.protocol.limits import MAX_OP_LEN
from moorage.supervisor.spec import ChildSpec, ConfigError, SupervisorSpec

Number = float  # an int is taken where a float is asked

# Ops named in `targets` and in `timeouts`, at most: a tree has a few dozen ops (as for the
# run-time overrides, supervisor/overrides.py).
MAX_TABLE_ENTRIES = 256
# The document packed, at most. A nested supervisor is spawned with all of it, an actor with
# its own table and the shared ones, each in one datagram to its zygote, which the socket's
# send buffer bounds (net.core.wmem_default, 208 KiB on Linux): this leaves room for the
# run-time overrides and the spawn's own keys. The default document packs to about 2 KiB.
MAX_PACKED_BYTES = 128 * 1024

METRICS = "moorage.actors.metrics.actor:MetricsActor"
RESOURCE = "moorage.actors.resource.actor:ResourceActor"
PARSER = "moorage.actors.parser.actor:ParserActor"
WATCHER = "moorage.actors.watcher.actor:WatcherActor"
TERMINAL = "moorage.actors.terminal.actor:TerminalActor"
KEEPER = "moorage.actors.terminal.keeper.actor:PtyKeeper"
ROOT = "supervisor"  # the root supervisor's id


@dataclass(frozen=True)
class Min:
    """`Annotated[int, Min(1)]`: the least value a setting may take; with `exclusive`, the
    value must be more than `lo`."""

    lo: float
    exclusive: bool = False

    def check(self, value: float, where: str) -> None:
        if value < self.lo or (self.exclusive and value == self.lo):
            word = "more than" if self.exclusive else "at least"
            raise ConfigError(f"{where}: must be {word} {self.lo:g}, got {value!r}")


@dataclass(frozen=True)
class ChildRef:
    """`Annotated[str, ChildRef(KEEPER)]`: the id of another child of the tree, one that
    starts the class `start` (a child of a class from elsewhere is taken on trust: it may
    serve the same ops); `ChildRef(ROOT)`: the root or a nested supervisor."""

    start: str

    def fits(self, name: str, ids: dict[str, ChildSpec]) -> bool:
        child = ids.get(name)
        if self.start == ROOT:
            return name == ROOT or (child is not None and child.supervisor is not None)
        return child is not None and child.supervisor is None and (
            child.start == self.start or child.start not in ACTOR_TABLES)

    def what(self) -> str:
        return "a supervisor of this tree" if self.start == ROOT else \
            f"a child of this tree that starts {self.start}"


NonNegative = Annotated[int, Min(0)]
Positive = Annotated[int, Min(1)]
# loguru's levels, as `moorage up --log-level` takes them (upper case here: as the actor
# hands it to loguru, which knows no other spelling)
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class RuntimeTable(TypedDict, total=False):
    """What every actor's runtime reads (actors/runtime/actor.py, process.py)."""

    timeouts: dict[str, Positive]
    targets: dict[str, list[Number]]
    reply_cache_entries: NonNegative
    reply_cache_bytes: NonNegative
    queue_limit: Positive
    busy_retry_ms: NonNegative
    shed_below_quality: NonNegative
    shed_retry_ms: NonNegative
    pub_hwm: NonNegative  # (0: no limit, as ZeroMQ reads it; below, the socket refuses it)
    retention_messages: NonNegative
    retention_bytes: NonNegative
    push_metrics: bool
    metrics_interval_s: Annotated[Number, Min(0, exclusive=True)]
    log_level: LogLevel
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
    supervisor: Annotated[str, ChildRef(ROOT)]  # whose events are followed
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
    memory_budget_mb: Annotated[Number, Min(0, exclusive=True)]
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
    supervisor: Annotated[str, ChildRef(ROOT)]  # whose status and events are read


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
    keeper: Annotated[str, ChildRef(KEEPER)]
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
    parser: Annotated[str, ChildRef(PARSER)]
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
    METRICS: MetricsTable,
    RESOURCE: ResourceTable,
    PARSER: ParserTable,
    WATCHER: WatcherTable,
    TERMINAL: TerminalTable,
    KEEPER: KeeperTable,
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
    if get_origin(t) is Annotated:
        return _describe(get_args(t)[0])
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
    if get_origin(t) is Annotated:
        base, *marks = get_args(t)
        check(value, base, where)
        for mark in marks:
            if isinstance(mark, Min):
                mark.check(value, where)
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
    hints = get_type_hints(table, include_extras=True)
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
    check_shared(doc)
    ids = {c.id: c for _, c in tree.walk()}
    tables = doc.get("actor") or {}
    users = (user or {}).get("actor") or {}
    for cid, table in tables.items():
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
    for owner, child in tree.walk():  # an inline `config = {...}` of a [[children]] entry too
        if child.supervisor is None:
            schema = ACTOR_TABLES.get(child.start)
            check_table(child.config, schema or RuntimeTable, f"{child.id}.config",
                        extra_ok=schema is None)
            check_child_refs(child, ids, tables.get(child.id) or {})
            check_fallbacks(child, f"{owner.id}.children.{child.id}.fallbacks")
    check_packed(doc)


def check_shared(doc: dict[str, Any]) -> None:
    """The top-level tables every actor is given (`targets`, `timeouts`), and `lifecycle`."""
    for name in ("targets", "timeouts"):
        check_op_names(doc.get(name) or {}, name)
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


def check_child_refs(child: ChildSpec, ids: dict[str, ChildSpec], table: dict) -> None:
    """Each setting of `child` that names another child (a ChildRef) names one that fits."""
    schema = ACTOR_TABLES.get(child.start)
    if schema is None:
        return
    for key, t in get_type_hints(schema, include_extras=True).items():
        refs = [m for m in get_args(t)[1:] if isinstance(m, ChildRef)] \
            if get_origin(t) is Annotated else []
        name = child.config.get(key)
        if not refs or name is None or refs[0].fits(name, ids):
            continue
        where = f"actor.{child.id}.{key}" if key in table else f"{child.id}.config.{key}"
        fit = sorted(n for n in (ROOT, *ids) if refs[0].fits(n, ids))
        raise ConfigError(f"{where}: {name!r} is not {refs[0].what()} (those that are: "
                          f"{', '.join(fit) or 'none'})")


# The fallbacks each of our classes declares (its `fallbacks` attribute), here as its settings
# table is: `moorage up` checks a document without importing the actors (their modules are
# the zygote's to import, beside the root's start-up, not before it); a test holds the two
# equal.
ACTOR_FALLBACKS: dict[str, tuple[str, ...]] = {
    METRICS: (),
    RESOURCE: (),
    PARSER: ("raw_passthrough",),
    WATCHER: ("polling", "cache_only"),
    TERMINAL: (),
    KEEPER: (),
}


def declared_fallbacks(start: str) -> tuple[str, ...] | None:
    """The fallbacks the class `start` declares, or None for a class this package does not
    ship: it may name any."""
    return ACTOR_FALLBACKS.get(start)


def check_fallbacks(child: ChildSpec, where: str) -> None:
    if not child.fallbacks:
        return  # (its class is not imported for nothing)
    declared = declared_fallbacks(child.start)
    if declared is None:
        return
    for i, name in enumerate(child.fallbacks):
        if name not in declared:
            raise ConfigError(f"{where}[{i}]: unknown fallback {name!r} (known: "
                              f"{', '.join(declared) or 'none: its class declares none'})")


def check_op_names(table: dict[str, Any], where: str) -> None:
    """A table keyed by op name: no more ops than a tree has, each a name an op can have."""
    if len(table) > MAX_TABLE_ENTRIES:
        raise ConfigError(f"{where}: {len(table)} ops, more than {MAX_TABLE_ENTRIES} (a tree "
                          "has a few dozen)")
    for op in table:
        if not 0 < len(op) <= MAX_OP_LEN or not op.isprintable():
            raise ConfigError(f"{where}.{op[:80]!r}: an op name is 1 to {MAX_OP_LEN} printable "
                              "characters")


def check_packed(doc: dict[str, Any]) -> None:
    """The document can be sent to the tree's processes as it is: packed as a spawn request
    packs it, within MAX_PACKED_BYTES (a TOML date, an integer past 64 bits or a value nested
    past msgpack's limit, in the settings of a class from elsewhere, cannot be packed)."""
    try:
        size = len(msgpack.packb(doc, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"a value cannot be sent to the tree's processes: {exc}") from None
    if size > MAX_PACKED_BYTES:
        raise ConfigError(f"the configuration packs to {size} bytes, more than the "
                          f"{MAX_PACKED_BYTES} a process of the tree is started with")

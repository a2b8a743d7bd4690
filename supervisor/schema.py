"""One schema for the whole configuration document, checked at `moorage up` before anything
starts: an unknown key or a value of the wrong type is a ConfigError naming its path
(`actor.resource.memory_budget_mb: must be a number, got 'lots'`), never a child that crash-
loops on it later.

The tables are TypedDicts (every key optional: the actors own the defaults); `check` walks a
value against a type: int (not bool), float (an int is taken; nan and inf are not), bool, str,
Literal, list[T], dict[str, T], a union, a nested table, or `Annotated[T, Bound...]`: a Min,
Max, Length, Patterns, AbsolutePath or FileName refuses what the actor would refuse as it starts
(or what would break it later: a zero interval it would spin on, a silent clamp to another
value), with the same bounds, written here (the root does not import the actors to check a
document; a test, tests/test_config_bounds.py, holds each bound to the actor's own reading of
it). A table's
rule across its keys (RULES: metrics' window over its buckets, the watcher's relative watches
taken from its roots) is checked once its keys are, on an actor's settings whole.
`Annotated[str, ChildRef(...)]`
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

from moorage.protocol.limits import MAX_MESSAGE_SIZE, MAX_OP_LEN
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


def _num(x: float) -> str:
    """A bound as written: 67108864, not 6.71089e+07; 9.5367431640625e-07 in full."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Bound:
    """A mark on a setting's type that refuses some of its values; `check` raises ConfigError
    naming `where`."""

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Min(Bound):
    """`Annotated[int, Min(1)]`: the least value a setting may take; with `exclusive`, the
    value must be more than `lo`."""

    lo: float
    exclusive: bool = False

    def check(self, value: float, where: str) -> None:
        if value < self.lo or (self.exclusive and value == self.lo):
            word = "more than" if self.exclusive else "at least"
            raise ConfigError(f"{where}: must be {word} {_num(self.lo)}, got {value!r}")


@dataclass(frozen=True)
class Max(Bound):
    """`Annotated[float, Max(1)]`: the largest value a setting may take; with `exclusive`, the
    value must be less than `hi`."""

    hi: float
    exclusive: bool = False

    def check(self, value: float, where: str) -> None:
        if value > self.hi or (self.exclusive and value == self.hi):
            word = "less than" if self.exclusive else "at most"
            raise ConfigError(f"{where}: must be {word} {_num(self.hi)}, got {value!r}")


@dataclass(frozen=True)
class Length(Bound):
    """`Annotated[list[T], Length(2, 3)]`: a list of `lo` to `hi` items."""

    lo: int
    hi: int

    def check(self, value: list[Any], where: str) -> None:
        if not self.lo <= len(value) <= self.hi:
            raise ConfigError(f"{where}: must have {self.lo} to {self.hi} items, got "
                              f"{len(value)}")


@dataclass(frozen=True)
class Patterns(Bound):
    """`Annotated[list[str], Patterns(most, each, total)]`: at most `most` non-empty patterns
    of at most `each` characters, `total` in all (the watcher's excludes: it refuses more
    before compiling any, and would list such a configured watch as not placed)."""

    most: int
    each: int
    total: int

    def check(self, value: list[str], where: str) -> None:
        if len(value) > self.most:
            raise ConfigError(f"{where}: at most {self.most} patterns, got {len(value)}")
        for i, pattern in enumerate(value):
            if not pattern or len(pattern) > self.each:
                raise ConfigError(f"{where}[{i}]: must be 1 to {self.each} characters, got "
                                  f"{len(pattern)}")
        total = sum(map(len, value))
        if total > self.total:
            raise ConfigError(f"{where}: at most {self.total} characters in all, got {total}")


@dataclass(frozen=True)
class AbsolutePath(Bound):
    """`Annotated[str, AbsolutePath()]`: a path from `/`, without a NUL (no file has one)."""

    def check(self, value: str, where: str) -> None:
        if not value.startswith("/") or "\0" in value:
            raise ConfigError(f"{where}: must be an absolute path, got {value!r:.200}")


@dataclass(frozen=True)
class FileName(Bound):
    """`Annotated[str, FileName()]`: one file's name in a directory the actor chooses, not a
    path."""

    def check(self, value: str, where: str) -> None:
        if "/" in value or "\0" in value or value in ("", ".", ".."):
            raise ConfigError(f"{where}: must be a file name (no '/'), got {value!r:.200}")


@dataclass(frozen=True)
class PathText(Bound):
    """`Annotated[str, PathText()]`: a path, absolute or relative (to a root the actor
    chooses), not empty and without a NUL."""

    def check(self, value: str, where: str) -> None:
        if not value or "\0" in value:
            raise ConfigError(f"{where}: must be a path, got {value!r:.200}")


@dataclass(frozen=True)
class RelativeTo:
    """A rule across two keys of a table: each path of `key` (a string, or a table's `path`)
    that is relative is taken from the first of `roots`, so it needs one. Where a path leads
    is not looked at here: resolving it may wait on a stalled mount, and its symbolic links
    may change before the actor starts (the watcher reports a watch it cannot place)."""

    key: str
    roots: str

    def check(self, table: dict[str, Any], where: str) -> None:
        for i, entry in enumerate(table.get(self.key) or ()):
            at = f"{where}.{self.key}[{i}]"
            if isinstance(entry, dict) and "path" not in entry:
                raise ConfigError(f"{at}: has no path")
            path = entry["path"] if isinstance(entry, dict) else entry
            if not path.startswith("/") and not table.get(self.roots):
                raise ConfigError(f"{at}: {path!r:.200} is relative, and there are no "
                                  f"{self.roots} to take it from")


@dataclass(frozen=True)
class Ratio:
    """A rule across two keys of a table: `lo <= key / per <= hi`, each key absent taken at
    the actor's default (`defaults`: key's, per's)."""

    key: str
    per: str
    lo: float
    hi: float
    defaults: tuple[float, float]

    def check(self, table: dict[str, Any], where: str) -> None:
        value, per = table.get(self.key, self.defaults[0]), table.get(self.per, self.defaults[1])
        if not self.lo * per <= value <= self.hi * per:
            at = f"{where}.{self.key}" if self.key in table else f"{where}.{self.per}"
            span = f"at least {_num(self.lo)}" if self.hi == math.inf else \
                f"{_num(self.lo)} to {_num(self.hi)}"
            raise ConfigError(f"{at}: {self.key} must be {span} x {self.per} ({per!r}), got "
                              f"{value!r}")


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
PositiveNumber = Annotated[Number, Min(0, exclusive=True)]  # (an interval: 0 would spin)
NonNegativeNumber = Annotated[Number, Min(0)]
Share = Annotated[Number, Min(0), Max(1)]
# [p50_us, p99_us] or [p50_us, p99_us, p999_us], each > 0 (as check_shared takes the tree's)
Target = Annotated[list[Annotated[Number, Min(0, exclusive=True)]], Length(2, 3)]
# loguru's levels, as `moorage up --log-level` takes them (upper case here: as the actor
# hands it to loguru, which knows no other spelling)
LogLevel = Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]


class RuntimeTable(TypedDict, total=False):
    """What every actor's runtime reads (actors/runtime/actor.py, process.py)."""

    timeouts: dict[str, Positive]
    targets: dict[str, Target]
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
    metrics_interval_s: PositiveNumber
    log_level: LogLevel
    io_threads_sched: Literal["batch", "normal"]


class SloObjectives(TypedDict, total=False):
    availability: Annotated[Number, Min(0, exclusive=True), Max(1)]
    error_rate: Annotated[Number, Min(0), Max(1, exclusive=True)]
    p99_us: Positive
    recovery_s: PositiveNumber
    p99_exclude: list[str]


# The metrics actor's buckets in one window, at most (actors/metrics/series.py MAX_SPAN).
METRICS_MAX_SPAN = 86_400


class MetricsTable(RuntimeTable, total=False):
    """actors/metrics/settings.py; and RULES: window_s is 1 to METRICS_MAX_SPAN buckets."""

    window_s: PositiveNumber
    bucket_s: PositiveNumber
    max_keys: Positive
    max_client_keys: NonNegative
    alert_history: Positive
    alert_min_samples: Positive
    alert_failure_rate: Number
    alert_latency_factor: Number
    alert_clear_ratio: Annotated[Number, Min(0, exclusive=True), Max(1)]
    supervisor: Annotated[str, ChildRef(ROOT)]  # whose events are followed
    slo_file: Annotated[str, FileName()]  # in the state dir
    slo_save_s: PositiveNumber
    probe_timeout_s: PositiveNumber
    rto_s: dict[str, PositiveNumber]
    rto_default_s: PositiveNumber
    slo: SloObjectives


class ResourceTable(RuntimeTable, total=False):
    """actors/resource/settings.py, and the parts the actor builds from it (levels.py,
    escalation.py, sampler.py)."""

    interval_s: Annotated[Number, Min(0.01), Max(3600)]
    calm_interval_s: Annotated[Number, Min(0), Max(3600)]  # (0: never calm)
    calm_after_samples: Positive
    # (one byte: the budget in bytes, MiB x 2**20 cut to an integer, is at least one)
    memory_budget_mb: Annotated[Number, Min(2 ** -20)]
    memory_metric: Literal["rss", "pss", "pss_tracked"]
    pss_every: Positive
    cpu_budget_cores: PositiveNumber
    cpu_weight: Share
    cpu_samples: Positive
    system_reserve: Annotated[Number, Min(0), Max(1, exclusive=True)]
    margin: NonNegative
    up_samples: Positive
    down_samples: Positive
    quality_up_samples: Positive
    kill_runaways: bool
    kill_after_samples: Positive
    runaway_min_share: NonNegativeNumber
    persist_after_samples: Positive
    shed_nonessential: bool
    restore_level: Literal["normal", "moderate", "high"]  # (below critical: it is restored from)
    restore_after_samples: Positive
    quality_file: bool
    tell_timeout_s: PositiveNumber
    status_timeout_s: PositiveNumber
    rescan_every: Positive
    supervisor: Annotated[str, ChildRef(ROOT)]  # whose status and events are read


class ParserTable(RuntimeTable, total=False):
    """actors/parser/actor.py Settings.from_config."""

    max_streams: Positive
    max_streams_per_session: Positive
    max_buffer: Annotated[int, Min(16)]
    max_feed_bytes: Annotated[int, Min(1), Max(MAX_MESSAGE_SIZE)]  # (a feed is one message)
    max_events_per_feed: Positive
    idle_timeout_s: PositiveNumber
    pressure_idle_s: NonNegativeNumber


class WatchEntry(TypedDict, total=False):
    path: Annotated[str, PathText()]
    recursive: bool
    # (actors/watcher/watches.py MAX_PATTERNS, MAX_PATTERN_CHARS, MAX_EXCLUDE_CHARS)
    exclude: Annotated[list[str], Patterns(64, 256, 4096)]


class RetryTable(TypedDict, total=False):
    retries: int
    initial_ms: Number
    factor: Number
    max_ms: Number


class WatcherTable(RuntimeTable, total=False):
    """actors/watcher/actor.py reads these as it starts, into the parts it builds: it refuses
    a relative root and a switch interval of 0 itself; the other bounds are where it would
    break (a chunk of 0 publishes nothing, a worker pool of no thread never runs a job, an
    observer's buffer of no room overflows on every event, a timer of 0 fires every turn)."""

    roots: list[Annotated[str, AbsolutePath()]]
    watch: list[Annotated[str, PathText()] | WatchEntry]
    settle_ms: Number
    buffer_max: Positive
    journal_max: int
    chunk: Positive
    cache_max_bytes: int
    cache_max_file_bytes: int
    max_read_bytes: Annotated[int, Min(1), Max(MAX_MESSAGE_SIZE)]  # (a read is one frame)
    list_max: int
    list_max_scanned: int
    list_loop_entries: int
    slow_fs_types: list[str]
    remote_threads: Positive
    remote_queue: NonNegative
    retry: RetryTable
    liveness_s: PositiveNumber
    health_interval_s: PositiveNumber
    health_timeout_s: Number
    poll_interval_s: PositiveNumber
    max_polled_subtrees: int
    checkpoint_s: Number
    resync_backoff_max_s: Number
    io_threads: Positive
    io_queue: NonNegative
    walk_queue: NonNegative
    write_bytes_in_flight: int
    switch_interval_s: PositiveNumber
    stat_ahead: bool
    state_dir: str


class TerminalTable(RuntimeTable, total=False):
    """actors/terminal/actor.py and parsehop.py ParserLink: a value the actor would raise to
    another (its least, or, RULES, parse_lag_bytes to parse_feed_bytes) is refused rather than
    changed in silence; consumer_timeout_ms 0 drops every consumer at once."""

    keeper: Annotated[str, ChildRef(KEEPER)]
    shells: list[str]
    default_shell: str
    term: str
    integration_detect_ms: int
    quiet_ms: int
    output_coalesce_ms: NonNegative
    exec_timeout_ms: int
    scrollback_bytes: int
    max_output_bytes: int
    keeper_wait_ms: int
    idle_close_s: Number
    closed_stream_keep_s: Number
    resume_wait_ms: int
    republish_bytes: int
    consumer_timeout_ms: Positive
    parse: Literal["actor", "local"]
    parser: Annotated[str, ChildRef(PARSER)]
    parse_timeout_ms: int
    parse_feed_bytes: Annotated[int, Min(4096)]
    parse_lag_bytes: int
    parse_retry_ms: int
    parse_retry_max_ms: int


class KeeperTable(RuntimeTable, total=False):
    """actors/terminal/keeper/actor.py: a value it would raise to its least is refused rather
    than changed in silence; an input limit of 0 refuses every write."""

    window_bytes: Annotated[int, Min(4096)]
    scrollback_bytes: NonNegative
    create_per_turn: Positive
    input_limit_bytes: Positive
    read_batch_bytes: Annotated[int, Min(4096)]
    stop_grace_ms: int
    close_grace_ms: int
    custody_wait_ms: NonNegative
    # at most link.CUSTODY_GIVE_UP_S: a terminal waits no longer for its sessions to settle
    custody_give_up_ms: Annotated[int, Min(0), Max(30_000)]


# Rules across the keys of a table, checked once each key is (check_table).
RULES: dict[type, tuple[Ratio | RelativeTo, ...]] = {
    WatcherTable: (RelativeTo("watch", "roots"),),
    MetricsTable: (Ratio("window_s", "bucket_s", 1, METRICS_MAX_SPAN, defaults=(60, 1)),),
    TerminalTable: (Ratio("parse_lag_bytes", "parse_feed_bytes", 1, math.inf,
                          defaults=(4 << 20, 1 << 20)),),
}

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
            if isinstance(mark, Bound):
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
            if not ok:  # the alternative of the value's own type names what is wrong
                for a in args:
                    if _is_table(a) and type(value) is dict:
                        check_table(value, a, where)
                    elif get_origin(a) is Annotated and type(value) is get_args(a)[0]:
                        check(value, a, where)
        else:
            raise TypeError(f"schema type {t!r} not supported")
    if not ok:
        raise ConfigError(f"{where}: must be {_describe(t)}, got {value!r:.80}")


def check_table(value: Any, table: type, where: str, extra_ok: bool = False,
                rules: bool = True) -> None:
    """`value` against `table`; and, with `rules`, its RULES (for the whole of an actor's
    settings, not for a part of them whose other part may hold a key a rule reads)."""
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
    for rule in RULES.get(table, ()) if rules else ():
        rule.check(value, where)


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
        check_table(table, schema or RuntimeTable, f"actor.{cid}", extra_ok=schema is None,
                    rules=False)
    for owner, child in tree.walk():  # an inline `config = {...}` of a [[children]] entry too
        if child.supervisor is None:
            # (its settings whole: the [actor.<id>] table's with the entry's inline ones)
            schema = ACTOR_TABLES.get(child.start)
            check_table(child.config, schema or RuntimeTable,
                        f"actor.{child.id}" if child.id in tables else f"{child.id}.config",
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

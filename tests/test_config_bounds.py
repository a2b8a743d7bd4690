"""Each bound the configuration schema declares on an actor's own settings is where that actor
stops taking the value: its own reading of them (its constructor, run here in the test process,
not in a tree) refuses the value just past the bound and takes the bound itself. Where the
actor takes the value past the bound but would change it in silence (`CLAMPED`) or break on it
later (`BREAKS_LATER`), the tables below say so and the test holds that too. So the schema,
which `moorage up` checks without importing any actor, and the actors cannot drift apart."""

from __future__ import annotations

import gc
import importlib
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import pytest

from moorage.actors.runtime import Actor
from moorage.supervisor import schema
from moorage.supervisor.schema import (
    KEEPER,
    METRICS,
    PARSER,
    RESOURCE,
    TERMINAL,
    WATCHER,
    Bound,
    Max,
    Min,
)
from moorage.supervisor.spec import ConfigError

pytestmark = pytest.mark.timeout(120)

RUNTIME_KEYS = set(get_type_hints(schema.RuntimeTable))

# Bounds the actor does not refuse as it starts: it raises a value below its least to that
# least (the setting is then not what the file says) ...
CLAMPED: dict[tuple[str, str], Callable[[Any], Any]] = {
    (KEEPER, "window_bytes"): lambda a: a.window,
    (KEEPER, "read_batch_bytes"): lambda a: a.read_batch,
    (KEEPER, "create_per_turn"): lambda a: a.create_per_turn,
    (KEEPER, "scrollback_bytes"): lambda a: a.scrollback,
    (TERMINAL, "parse_feed_bytes"): lambda a: a.parse_link.feed_bytes,
    (TERMINAL, "output_coalesce_ms"): lambda a: round(a.output_window_s * 1000),
}
# ... or it takes the value and breaks on it later.
BREAKS_LATER: dict[tuple[str, str], str] = {
    (WATCHER, "chunk"): "0: every flush fails (range step 0); less: nothing is published",
    (WATCHER, "buffer_max"): "no room: every event overflows the observer's buffer (a resync)",
    (WATCHER, "io_threads"): "no thread: fs.write and big listings wait for ever",
    (WATCHER, "remote_threads"): "no thread: every op on a slow file system waits for ever",
    (WATCHER, "io_queue"): "a pool's limit is threads + queue: less than its threads",
    (WATCHER, "remote_queue"): "a pool's limit is threads + queue: less than its threads",
    (WATCHER, "walk_queue"): "a pool's limit is threads + queue: less than its threads",
    (WATCHER, "liveness_s"): "a timer of 0 (call_every) fires on every turn of the loop",
    (WATCHER, "health_interval_s"): "a timer of 0 (call_every) fires on every turn of the loop",
    (WATCHER, "poll_interval_s"): "the polling observer's thread snapshots its roots unpaused",
    (TERMINAL, "consumer_timeout_ms"): "every consumer is dropped as silent at once",
    (KEEPER, "input_limit_bytes"): "every term.write is refused",
}


@dataclass(frozen=True)
class Case:
    """One bound: the value just past it, and the bound itself (the nearest value inside it,
    for an exclusive one), of one key of an actor's table."""

    start: str
    path: tuple[str, ...]
    past: float
    at: float

    @property
    def key(self) -> str:
        return self.path[0]

    def config(self, value: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        node = out
        for k in self.path[:-1]:
            node = node.setdefault(k, {})
        node[self.path[-1]] = value
        return out

    def __str__(self) -> str:
        return f"{self.start.rpartition(':')[2]}.{'.'.join(self.path)}"


def _edges(base: Any, mark: Bound) -> tuple[float, float]:
    """(just past, at) the bound of `mark` on a value of type `base`."""
    if isinstance(mark, Min):
        edge, out, step = mark.lo, -math.inf, -1
    else:
        assert isinstance(mark, Max)
        edge, out, step = mark.hi, math.inf, 1
    if base is int:
        return (edge, edge - step) if mark.exclusive else (edge + step, edge)
    inside = math.nextafter(edge, -out)
    return (edge, inside) if mark.exclusive else (math.nextafter(edge, out), edge)


def _cases_of(start: str, t: Any, path: tuple[str, ...]) -> Iterator[Case]:
    if schema._is_table(t):
        for k, sub in get_type_hints(t, include_extras=True).items():
            yield from _cases_of(start, sub, (*path, k))
    elif get_origin(t) is dict:
        yield from _cases_of(start, get_args(t)[1], (*path, "terminal"))
    elif get_origin(t) is Annotated:
        base, *marks = get_args(t)
        for mark in marks:
            if isinstance(mark, (Min, Max)):
                past, at = _edges(base, mark)
                yield Case(start, path, past, at)


def bound_cases() -> list[Case]:
    """Every numeric bound declared on a key of an actor's own (not the runtime's) table."""
    cases = []
    for start, table in schema.ACTOR_TABLES.items():
        for key, t in get_type_hints(table, include_extras=True).items():
            if key not in RUNTIME_KEYS:
                cases.extend(_cases_of(start, t, (key,)))
    return cases


CASES = bound_cases()


def close(actor: Actor) -> None:
    actor.close()
    if hasattr(actor, "listener"):  # the keeper's own socket (its on_stop closes it)
        actor.listener.close()


def half_built(exc: BaseException) -> None:
    """Close the sockets of an actor that refused its config after it bound them (the
    watcher's own checks come after the runtime's set-up): a process would exit."""
    tb = exc.__traceback__
    while tb is not None:
        this = tb.tb_frame.f_locals.get("self")
        if isinstance(this, Actor) and hasattr(this, "loop"):
            close(this)
            return
        tb = tb.tb_next


@pytest.fixture
def read(runtime_dir: Path) -> Iterator[Callable[[str, dict[str, Any]], Any]]:
    """`read(start, config)`: the actor of class `start` built with `config` as it is at its
    start (and closed again), or the exception it refused the config with."""
    switch, thresholds = sys.getswitchinterval(), gc.get_threshold()  # (the watcher's own)

    def build(start: str, config: dict[str, Any]) -> Any:
        module, _, name = start.partition(":")
        klass = getattr(importlib.import_module(module), name)
        try:
            actor = klass(None, runtime_dir, {"push_metrics": False, **config})
        except (ValueError, TypeError) as exc:
            half_built(exc)
            return exc.with_traceback(None)
        close(actor)
        return actor

    yield build
    sys.setswitchinterval(switch)
    gc.set_threshold(*thresholds)


@pytest.mark.parametrize("start", sorted(schema.ACTOR_TABLES))
def test_every_key_of_an_actors_table_is_read_by_that_actor(start):
    """A key the schema takes and no code reads would be a setting that does nothing, taken
    in silence: each of an actor's own keys is named in its package's source (as a string,
    or as a field of a settings class read field by field)."""
    package = Path(importlib.import_module(start.split(":")[0]).__file__).parent
    source = "\n".join(p.read_text() for p in package.rglob("*.py"))
    own = set(get_type_hints(schema.ACTOR_TABLES[start])) - RUNTIME_KEYS
    unread = {k for k in own if not re.search(rf'"{k}"|^ +{k}: ', source, re.MULTILINE)}
    assert own and not unread


def test_every_bound_of_an_actors_table_is_found_and_each_has_a_case():
    keys = {(c.start, c.key) for c in CASES}
    assert set(CLAMPED) | set(BREAKS_LATER) <= keys
    assert (PARSER, "max_feed_bytes") in keys and (RESOURCE, "system_reserve") in keys
    assert {c.start for c in CASES} == set(schema.ACTOR_TABLES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_schema_refuses_just_past_each_bound_and_takes_the_bound(case):
    table = schema.ACTOR_TABLES[case.start]
    with pytest.raises(ConfigError, match=r"must be"):
        schema.check_table(case.config(case.past), table, "actor.x")
    try:
        schema.check_table(case.config(case.at), table, "actor.x")
    except ConfigError as exc:  # only where another bound of the same key is tighter
        assert (case.start, case.key) in ((METRICS, "window_s"), (METRICS, "bucket_s")), \
            exc  # (RULES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_actor_refuses_just_past_each_bound_and_takes_the_bound(case, read):
    at_fits = schema._fits(case.config(case.at), schema.ACTOR_TABLES[case.start])
    past = read(case.start, case.config(case.past))
    at = read(case.start, case.config(case.at)) if at_fits else None
    assert not isinstance(at, Exception), f"{case} = {case.at!r} refused: {at}"
    effective = CLAMPED.get((case.start, case.key))
    if effective is not None:
        assert not isinstance(past, Exception), f"{case}: now refused; not CLAMPED any more"
        assert effective(past) != case.past, f"{case} = {case.past!r} is taken as it is"
        if at is not None:
            assert effective(at) == case.at
    elif (case.start, case.key) in BREAKS_LATER:
        assert not isinstance(past, Exception), f"{case}: now refused; not BREAKS_LATER"
    else:
        assert isinstance(past, ValueError), f"{case} = {case.past!r} is taken by the actor"


# --- bounds that are not a number's --------------------------------------------------------


@pytest.mark.parametrize(("start", "config", "says"), [
    (WATCHER, {"roots": ["relative/dir"]}, "roots[0]: must be an absolute path"),
    (WATCHER, {"roots": ["/tmp/a\0b"]}, "roots[0]: must be an absolute path"),
    (METRICS, {"slo_file": "dir/slo.msgpack"}, "slo_file: must be a file name"),
    (METRICS, {"slo_file": ".."}, "slo_file: must be a file name"),
    (METRICS, {"slo_file": ""}, "slo_file: must be a file name"),
    (METRICS, {"slo_file": "a\0b"}, "slo_file: must be a file name"),
    (METRICS, {"targets": {"fs.read": [100]}}, "targets.fs.read: must have 2 to 3 items"),
    (METRICS, {"targets": {"fs.read": [100, 0]}}, "targets.fs.read[1]: must be more than 0"),
    (RESOURCE, {"restore_level": "critical"}, "restore_level: must be one of"),
    (METRICS, {"window_s": 86_400.5}, "window_s: window_s must be 1 to 86400 x bucket_s (1)"),
    (METRICS, {"bucket_s": 61, "window_s": 60}, "window_s must be 1 to 86400 x bucket_s (61)"),
    (TERMINAL, {"parse_lag_bytes": 8192},
     "parse_lag_bytes must be at least 1 x parse_feed_bytes (1048576), got 8192"),
])
def test_a_value_the_actor_refuses_that_is_not_a_numbers_bound_is_refused_too(
        read, start, config, says):
    with pytest.raises(ConfigError) as e:
        schema.check_table(config, schema.ACTOR_TABLES[start], "actor.x")
    assert says in str(e.value)
    if start == TERMINAL:  # (it raises the lag to the feed's size, in silence)
        assert read(start, config).parse_link.lag_bytes == 1 << 20
    else:
        assert isinstance(read(start, config), ValueError)


@pytest.mark.parametrize(("start", "config"), [
    (WATCHER, {"roots": ["/nonexistent/but/absolute"]}),
    (METRICS, {"slo_file": "slo.msgpack"}),
    (METRICS, {"targets": {"fs.read": [100, 1000]}}),
    (METRICS, {"window_s": 86_400, "bucket_s": 1}),
    (METRICS, {"window_s": 5, "bucket_s": 5}),
    (METRICS, {"bucket_s": 60}),  # (the default's window is 60 s)
    (TERMINAL, {"parse_lag_bytes": 8192, "parse_feed_bytes": 8192}),
    (TERMINAL, {"parse_feed_bytes": 4 << 20}),  # (the default lag is 4 MiB)
])
def test_the_same_settings_at_their_edges_are_taken_by_both(read, start, config):
    schema.check_table(config, schema.ACTOR_TABLES[start], "actor.x")
    actor = read(start, config)
    assert not isinstance(actor, Exception), actor
    if start == TERMINAL:
        assert actor.parse_link.lag_bytes == config.get("parse_lag_bytes", 4 << 20)


def test_the_window_over_its_buckets_is_held_to_the_metrics_actors_own_limit(read):
    """The schema's copy of the actor's span (it imports no actor) at its edge, either way."""
    span = schema.METRICS_MAX_SPAN
    for bucket in (1, 0.25):
        at = {"bucket_s": bucket, "window_s": span * bucket}
        past = {"bucket_s": bucket, "window_s": math.nextafter(span * bucket, math.inf)}
        schema.check_table(at, schema.MetricsTable, "actor.metrics")
        assert not isinstance(read(METRICS, at), Exception)
        with pytest.raises(ConfigError):
            schema.check_table(past, schema.MetricsTable, "actor.metrics")
        assert isinstance(read(METRICS, past), ValueError)


def test_every_value_a_choice_of_an_actors_table_offers_is_one_the_actor_takes_and_only_those(
        read):
    for start, table in schema.ACTOR_TABLES.items():
        for key, t in get_type_hints(table).items():
            if key in RUNTIME_KEYS or get_origin(t) is not Literal:
                continue
            for value in get_args(t):
                actor = read(start, {key: value})
                assert not isinstance(actor, Exception), (start, key, value, actor)
            assert isinstance(read(start, {key: "nonsense"}), ValueError), (start, key)


def test_a_configured_watchs_excludes_are_held_to_the_watchers_own_bounds():
    """The schema's copy of the watcher's exclude bounds (watches.check_exclude), at each edge
    and just past it, either way: a configured watch past them is refused by `moorage up`
    rather than started and listed as not placed."""
    from moorage.actors.watcher import watches
    from moorage.protocol.errors import MoorageError

    most, each, total = watches.MAX_PATTERNS, watches.MAX_PATTERN_CHARS, watches.MAX_EXCLUDE_CHARS
    fill = total // each  # patterns of `each` characters that fit the total
    edges = [  # (at the bound, just past it)
        (["p"] * most, ["p"] * (most + 1)),
        (["x" * each], ["x" * (each + 1)]),
        (["x" * each] * fill + ["y"] * (total - fill * each),
         ["x" * each] * fill + ["y"] * (total - fill * each + 1)),
        (["p"], [""]),
    ]
    for at, past in edges:
        watches.check_exclude(at)
        schema.check_table({"watch": [{"path": "/w", "exclude": at}]}, schema.WatcherTable,
                           "actor.watcher")
        with pytest.raises(MoorageError):
            watches.check_exclude(past)
        with pytest.raises(ConfigError, match=r"actor\.watcher\.watch\[0\]\.exclude"):
            schema.check_table({"watch": [{"path": "/w", "exclude": past}]},
                               schema.WatcherTable, "actor.watcher")

"""What the configuration check refuses before anything starts, so that what it lets through
can be started and serves: fallback names a class does not have, unknown or truncated values
of the supervisor's back-off and counts, settings that name a child the tree does not have
(or one of another class), tables and documents too large to hand a process of the tree,
supervisors nested without end, and runtime settings an actor would refuse at start."""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.limits import MAX_OP_LEN
from moorage.supervisor import config, schema, spec
from moorage.supervisor.cli.common import tree_pid
from moorage.supervisor.spec import ConfigError
from tests.conftest import ROOT, printed_by

LINE_WAIT_S = 60

pytestmark = pytest.mark.timeout(120)

PARSER = 'start = "moorage.actors.parser.actor:ParserActor"'
FAKE = 'start = "tests.fakes:FakeActor"'


def load(tmp_path: Path, text: str, allow_external: bool = False) -> dict[str, Any]:
    """The merged document of `text` over the default, as `moorage up` checks it."""
    path = tmp_path / "moorage.toml"
    path.write_text(text)
    doc, _ = config.load(path, allow_external=allow_external, env={"HOME": str(tmp_path)})
    return doc


def refused(tmp_path: Path, text: str, allow_external: bool = False) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text, allow_external)
    return str(e.value)


def default_with(old: str, new: str) -> str:
    """The embedded default tree, one line of it changed."""
    text = (ROOT / "supervisor" / "default.toml").read_text()
    assert text.count(old) == 1
    return text.replace(old, new)


# --- fallbacks -------------------------------------------------------------------------------


def test_a_fallback_its_class_does_not_declare_is_refused_naming_those_it_does(tmp_path):
    msg = refused(tmp_path, default_with('fallbacks = ["raw_passthrough"]',
                                         'fallbacks = ["raw_passthru"]'))
    assert "supervisor.children.parser.fallbacks[0]: unknown fallback 'raw_passthru' " \
        "(known: raw_passthrough)" in msg
    msg = refused(tmp_path, default_with('fallbacks = ["polling", "cache_only"]',
                                         'fallbacks = ["polling", "cache-only"]'))
    assert "watcher.fallbacks[1]: unknown fallback 'cache-only' (known: polling, " \
        "cache_only)" in msg
    for cid, start in (("t", "moorage.actors.terminal.actor:TerminalActor"),
                       ("k", "moorage.actors.terminal.keeper.actor:PtyKeeper")):
        msg = refused(tmp_path, f'[[children]]\nid = "{cid}"\nstart = "{start}"\n'
                                'fallbacks = ["degraded"]\n')
        assert f"{cid}.fallbacks[0]: unknown fallback 'degraded' (known: none" in msg
    assert load(tmp_path, default_with('fallbacks = ["polling", "cache_only"]',
                                       'fallbacks = ["cache_only"]'))


def test_the_fallbacks_the_check_knows_are_those_each_class_declares():
    for start, names in schema.ACTOR_FALLBACKS.items():
        module, _, name = start.partition(":")
        klass = getattr(importlib.import_module(module), name)
        assert tuple(getattr(klass, "fallbacks", ())) == names, start


def test_checking_the_default_document_imports_no_actor():
    """The check runs in `moorage up` before the zygote forks: an actor's module imported
    there would hold the start-up for it (the zygote imports them beside the root's work)."""
    script = ("import sys\nfrom moorage.supervisor import config\nconfig.load(None, env={})\n"
              "print(sorted(m for m in sys.modules if m.startswith('moorage.actors.')"
              " and m.endswith('.actor')))")
    assert printed_by(script) == "[]"


def test_a_class_from_elsewhere_may_name_any_fallback_and_a_supervisor_names_none(tmp_path):
    assert load(tmp_path, f'[[children]]\nid = "a"\n{FAKE}\nfallbacks = ["degraded"]\n',
                allow_external=True)
    msg = refused(tmp_path, '[[children]]\nid = "s"\ntype = "supervisor"\n'
                            f'fallbacks = ["x"]\n[[children.children]]\nid = "a"\n{PARSER}\n')
    assert "supervisor.children[0].fallbacks: a supervisor has no fallbacks" in msg


# --- the supervisor's numbers ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("[supervisor]\nbackoff = { initial = 5 }\n",
     "supervisor.backoff.initial: unknown key (known: factor, initial_ms, max_ms)"),
    ("[supervisor]\nbackoff = { initial_ms = 5000, max_ms = 10 }\n",
     "supervisor.backoff.initial_ms: the first delay (5000 ms) is more than the longest"),
    ("[supervisor]\nbackoff = { initial_ms = 5000 }\n",  # the default's max_ms is 2000
     "supervisor.backoff.initial_ms"),
    ("[supervisor]\nintensity = 2.7\n", "supervisor.intensity: must be an integer"),
    ("[supervisor]\nintensity = true\n", "supervisor.intensity: must be an integer"),
    ("[supervisor]\nstart_timeout_ms = 1.5\n", "supervisor.start_timeout_ms: must be an integer"),
    ("[supervisor]\nheartbeat = { misses = 2.5 }\n",
     "supervisor.heartbeat.misses: must be an integer"),
    (f'[[children]]\nid = "a"\n{PARSER}\nshutdown_ms = true\n',
     "supervisor.children[0].shutdown_ms: must be milliseconds"),
    ('[[children]]\nid = "s"\ntype = "supervisor"\nbackoff = { max = 1 }\n'
     f'[[children.children]]\nid = "a"\n{PARSER}\n',
     "supervisor.children[0].backoff.max: unknown key"),
])
def test_the_back_off_takes_only_its_keys_and_counts_are_integers(tmp_path, text, says):
    assert says in refused(tmp_path, text)


def test_a_back_off_within_its_bounds_and_integer_counts_pass(tmp_path):
    doc = load(tmp_path, "[supervisor]\nintensity = 3\nstart_timeout_ms = 500\n"
                         "backoff = { initial_ms = 2000, factor = 1.5, max_ms = 2000 }\n")
    assert doc["supervisor"]["backoff"] == {"initial_ms": 2000, "factor": 1.5, "max_ms": 2000}


# --- settings that name a child --------------------------------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("[actor.terminal]\nkeeper = 'nokeeper'\n",
     "actor.terminal.keeper: 'nokeeper' is not a child of this tree that starts "
     "moorage.actors.terminal.keeper.actor:PtyKeeper (those that are: ptykeeper)"),
    ("[actor.terminal]\nkeeper = 'parser'\n", "actor.terminal.keeper: 'parser' is not"),
    ("[actor.terminal]\nparser = 'watcher'\n",
     "actor.terminal.parser: 'watcher' is not a child of this tree that starts "
     "moorage.actors.parser.actor:ParserActor (those that are: parser)"),
    ("[actor.metrics]\nsupervisor = 'root'\n",
     "actor.metrics.supervisor: 'root' is not a supervisor of this tree (those that are: "
     "supervisor, terminals)"),
    ("[actor.resource]\nsupervisor = 'parser'\n", "actor.resource.supervisor: 'parser' is not"),
])
def test_a_setting_that_names_another_child_must_name_one_of_its_class(tmp_path, text, says):
    assert says in refused(tmp_path, text)


def test_a_named_child_that_fits_passes_and_one_from_elsewhere_is_taken_on_trust(tmp_path):
    assert load(tmp_path, "[actor.resource]\nsupervisor = 'terminals'\n"
                          "[actor.terminal]\nkeeper = 'ptykeeper'\nparser = 'parser'\n")
    text = (f'[[children]]\nid = "mykeeper"\n{FAKE}\n[[children]]\nid = "term"\n'
            'start = "moorage.actors.terminal.actor:TerminalActor"\n'
            'config = { keeper = "mykeeper" }\n')
    assert load(tmp_path, text, allow_external=True)
    msg = refused(tmp_path, text.replace('keeper = "mykeeper"', 'keeper = "other"'),
                  allow_external=True)
    assert "term.config.keeper: 'other' is not a child" in msg


# --- what passes can be started --------------------------------------------------------------


def ops(n: int) -> list[str]:
    """`n` op names of the longest length an op name has."""
    return [f"op{i}".ljust(MAX_OP_LEN, "x") for i in range(n)]


def room(table: str) -> int:
    """Ops a user's `table` may add to the default's own (the tables merge)."""
    return schema.MAX_TABLE_ENTRIES - len(config.default_document()[table])


def test_targets_and_timeouts_name_a_bounded_number_of_ops_of_an_ops_length(tmp_path):
    many = "".join(f'"{op}" = 1000\n' for op in ops(room("timeouts") + 1))
    assert f"timeouts: {schema.MAX_TABLE_ENTRIES + 1} ops, more than " \
        f"{schema.MAX_TABLE_ENTRIES}" in refused(tmp_path, "[timeouts]\n" + many)
    many = "".join(f'"{op}" = [1, 2]\n' for op in ops(room("targets") + 1))
    assert f"targets: {schema.MAX_TABLE_ENTRIES + 1} ops" in refused(
        tmp_path, "[targets]\n" + many)
    long = "x" * (MAX_OP_LEN + 1)
    assert f"an op name is 1 to {MAX_OP_LEN} printable" in refused(
        tmp_path, f'[timeouts]\n"{long}" = 1000\n')


def test_a_document_too_large_or_with_a_value_no_process_can_be_sent_is_refused(tmp_path):
    watch = ", ".join(f'"/nonexistent/directory/of/some/length/{i:06d}"' for i in range(5000))
    msg = refused(tmp_path, f"[actor.watcher]\nwatch = [{watch}]\n")
    assert f"more than the {schema.MAX_PACKED_BYTES} a process of the tree is started " \
        "with" in msg
    msg = refused(tmp_path, f'[[children]]\nid = "a"\n{FAKE}\n'
                            "config = { when = 2026-12-06T17:59:08Z }\n", allow_external=True)
    assert "a value cannot be sent to the tree's processes" in msg


def test_the_largest_tables_that_pass_start_a_tree_with_a_nested_supervisor(make_tree):
    """Every actor is spawned with the shared tables, and the nested supervisor with the whole
    document: at their limits, every child still starts and serves."""
    timeouts = '"parse.close" = 4321\n' + "".join(
        f'"{op}" = 1000\n' for op in ops(room("timeouts") - 1))
    targets = "".join(f'"{op}" = [100, 1000, 10000]\n' for op in ops(room("targets")))
    tree = make_tree(f'[[children]]\nid = "parser"\n{PARSER}\n'
                     '[[children]]\nid = "inner"\ntype = "supervisor"\n'
                     f'[[children.children]]\nid = "parser2"\n{PARSER}\n'
                     f"[timeouts]\n{timeouts}[targets]\n{targets}").start()
    for actor in ("parser", "parser2"):
        assert tree.call(actor, "sys.info")["ops"]["parse.close"]["timeout_ms"] == 4321


# --- nesting and the runtime's settings ------------------------------------------------------


def nested(depth: int) -> str:
    """Supervisors nested `depth` deep below the root, a parser at the bottom."""
    out = ""
    for i in range(depth):
        out += f'[[{"children." * i}children]]\nid = "s{i}"\ntype = "supervisor"\n'
    return out + f'[[{"children." * depth}children]]\nid = "p"\n{PARSER}\n'


def test_supervisors_nested_past_the_limit_are_refused_however_deep(tmp_path):
    assert load(tmp_path, nested(spec.MAX_NESTING))
    for depth in (spec.MAX_NESTING + 1, 600):
        assert f"supervisors are nested more than {spec.MAX_NESTING} deep" in refused(
            tmp_path, nested(depth))


def test_a_file_nested_too_deep_to_read_is_refused_as_a_bad_config(tmp_path):
    assert "values nested too deep to read" in refused(
        tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")


@pytest.mark.parametrize(("text", "says"), [
    ("[actor.parser]\nlog_level = 'LOUD'\n", "actor.parser.log_level: must be one of 'TRACE'"),
    ("[actor.parser]\nlog_level = 'debug'\n", "actor.parser.log_level: must be one of"),
    ("[actor.parser]\npub_hwm = -5\n", "actor.parser.pub_hwm: must be at least 0, got -5"),
    ("[actor.watcher]\nqueue_limit = 0\n", "actor.watcher.queue_limit: must be at least 1"),
    ("[actor.metrics]\nmetrics_interval_s = 0\n",
     "actor.metrics.metrics_interval_s: must be more than 0"),
    ("[actor.resource]\nmemory_budget_mb = 0\n",
     "actor.resource.memory_budget_mb: must be at least 9.5367431640625e-07, got 0"),
    ("[actor.parser]\ntimeouts = { 'sys.ping' = 0 }\n",
     "actor.parser.timeouts.sys.ping: must be at least 1"),
])
def test_a_runtime_setting_the_actor_would_refuse_at_start_is_refused_by_the_schema(
        tmp_path, text, says):
    assert says in refused(tmp_path, text)


@pytest.mark.parametrize(("text", "says"), [
    ("[actor.metrics]\nbucket_s = 61\n",  # (the default's window_s is 60)
     "actor.metrics.window_s: window_s must be 1 to 86400 x bucket_s (61), got 60"),
    ("[actor.resource]\nrestore_level = 'critical'\n", "actor.resource.restore_level: must be"),
    ("[actor.resource]\nsystem_reserve = 1.0\n",
     "actor.resource.system_reserve: must be less than 1, got 1.0"),
    ("[actor.watcher]\nroots = ['src']\n", "actor.watcher.roots[0]: must be an absolute path"),
    ('[[children]]\nid = "p"\nstart = "moorage.actors.parser.actor:ParserActor"\n'
     "config = { max_feed_bytes = 67108865 }\n",
     "p.config.max_feed_bytes: must be at most 67108864, got 67108865"),
])
def test_an_actors_own_setting_it_would_refuse_is_refused_in_the_whole_document(
        tmp_path, text, says):
    assert says in refused(tmp_path, text)


def test_a_watch_the_watcher_could_not_place_as_it_starts_is_refused(tmp_path):
    inside = tmp_path / "ws"
    says = {
        "watch = ['']": "actor.watcher.watch[0]: must be a path, got ''",
        'watch = [{ path = "a\\u0000b" }]': "actor.watcher.watch[0].path: must be a path",
        "watch = [{ recursive = false }]": "actor.watcher.watch[0]: has no path",
        "watch = ['/abs', 'src']": "actor.watcher.watch[1]: 'src' is relative, and there are "
                                   "no roots",
    }
    for text, message in says.items():
        assert message in refused(tmp_path, f"[actor.watcher]\n{text}\n"), text
    # The rule reads the watcher's settings whole: its roots in [actor.watcher], a relative
    # watch in its [[children]] entry's inline config. (Where a watch leads is the watcher's
    # to find as it starts: test_watcher.py.)
    text = default_with('fallbacks = ["polling", "cache_only"]', 'fallbacks = ["polling", '
                        '"cache_only"]\nconfig = { watch = ["src", "/elsewhere"] }')
    text = text.replace("\nroots = []", f"\nroots = ['{inside}']", 1)
    assert load(tmp_path, text)["actor"]["watcher"]["roots"] == [str(inside)]


def test_runtime_settings_at_their_bounds_pass(tmp_path):
    doc = load(tmp_path, "[actor.parser]\nlog_level = 'DEBUG'\npub_hwm = 0\nqueue_limit = 1\n"
                         "metrics_interval_s = 0.05\n")
    assert doc["actor"]["parser"]["pub_hwm"] == 0


# --- `moorage up` ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    (default_with('fallbacks = ["raw_passthrough"]', 'fallbacks = ["raw_passthru"]'),
     "supervisor.children.parser.fallbacks[0]"),
    ("[supervisor]\nbackoff = { initial = 5 }\n", "supervisor.backoff.initial"),
    ("[actor.terminal]\nkeeper = 'nokeeper'\n", "actor.terminal.keeper"),
    ("[timeouts]\n" + "".join(f'"op.{i}" = 1000\n' for i in range(20_000)), "timeouts"),
    (nested(40), "supervisors are nested"),
    ("[actor.parser]\nlog_level = 'LOUD'\n", "actor.parser.log_level"),
    # an actor's own settings: where it would refuse them as it starts (a crash loop, then
    # the tree gives up), break on them later, or change them in silence
    ("[actor.parser]\nmax_streams = 0\n", "actor.parser.max_streams: must be at least 1, got 0"),
    ("[actor.watcher]\nchunk = 0\n", "actor.watcher.chunk: must be at least 1, got 0"),
    ("[actor.ptykeeper]\nwindow_bytes = 0\n",
     "actor.ptykeeper.window_bytes: must be at least 4096, got 0"),
], ids=["fallback", "backoff", "keeper", "timeouts", "nesting", "log_level", "parser_bound",
        "watcher_bound", "ptykeeper_bound"])
def test_up_refuses_each_with_bad_config_and_exit_2_before_anything_starts(
        runtime_dir, text, key):
    rdir = runtime_dir / "bad"
    path = runtime_dir / "bad.toml"
    path.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                             str(rdir), "up", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert select.select([proc.stdout], [], [], LINE_WAIT_S)[0], "no line from up"
        line = json.loads(proc.stdout.readline())
        assert line["moorage"] == "failed" and line["error"]["name"] == "bad_config", line
        assert key in line["error"]["message"]
        assert proc.wait(30) == 2 and "Traceback" not in proc.stderr.read().decode()
        assert tree_pid(rdir) is None
    finally:
        if proc.poll() is None:  # (a tree that started: it and all below it end)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

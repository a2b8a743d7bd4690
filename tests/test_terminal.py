"""The terminal actor with its keeper, each in its own process, on real PTYs and real shells."""

from __future__ import annotations

import os
import re
import shutil
import threading
from typing import Any

import pytest
import zmq

from moorage.actors.vtparse import clean
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import decode_reply, encode_request
from moorage.protocol.errors import MoorageError
from tests.pressure_support import told
from tests.terminal_support import Commands, Output, RawOutput, env_for, make_home
from tests.waiting import open_gate, wait_for

pytestmark = pytest.mark.timeout(120)

HAS_ZSH = shutil.which("zsh") is not None
HAS_DASH = shutil.which("dash") is not None


class Term:
    def __init__(self, client: Client, home: Any) -> None:
        self.client = client
        self.home = home
        self.opened: list[Any] = []

    def call(self, op: str, args: dict, **kw: Any) -> Any:
        return self.client.call("terminal", op, args, timeout=kw.pop("timeout", 30.0), **kw)

    def create(self, shell: str = "bash", **kw: Any) -> dict:
        return self.call("term.create", {"shell": shell, "env": env_for(self.home)} | kw)

    def exec(self, sid: str, command: str, timeout: float = 30.0, **kw: Any) -> dict:
        return self.call("term.exec", {"session": sid, "command": command} | kw,
                         timeout=timeout)

    def output(self, sid: str) -> Output:
        out = Output(self.client, sid)
        self.opened.append(out)
        return out

    def commands(self, sid: str) -> Commands:
        cmds = Commands(self.client, sid)
        self.opened.append(cmds)
        return cmds

    def exec_in_thread(self, sid: str, command: str, **kw: Any) -> tuple[threading.Thread, dict]:
        """term.exec from another client (the blocking client does one call at a time)."""
        box: dict[str, Any] = {}

        def run() -> None:
            with Client(self.client.runtime_dir, timeout=60.0) as c:
                try:
                    box["reply"] = c.call("terminal", "term.exec",
                                          {"session": sid, "command": command} | kw)
                except MoorageError as exc:
                    box["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        return t, box


@pytest.fixture
def term_config() -> dict:
    return {"quiet_ms": 200, "shells": ["bash"]}


@pytest.fixture
def term(spawn_actor, client, tmp_path, term_config):
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal", **term_config)
    t = Term(client, make_home(tmp_path))
    yield t
    for o in t.opened:
        o.close()


def expect_error(name: str, fn, *args, **kw) -> MoorageError:
    with pytest.raises(MoorageError) as e:
        fn(*args, **kw)
    assert e.value.name == name, e.value
    return e.value


# --- integration ---------------------------------------------------------------------------


def test_echo_test_in_bash_gives_exit_0_output_test_and_integration_mode(term):
    s = term.create("bash")
    assert s["mode"] == "integration" and s["kind"] == "bash" and s["attempts"] == []
    r = term.exec(s["session"], "echo test")
    assert r["exit_code"] == 0 and r["output"] == "test"
    assert r["mode"] == "integration" and r["trusted"] is True
    assert r["duration_ms"] > 0 and r["cwd"] == str(term.home)


@pytest.mark.parametrize("code", [0, 1, 130, 255])
def test_exit_codes_are_reported_exactly(term, code):
    sid = term.create("bash")["session"]
    assert term.exec(sid, f"(exit {code})")["exit_code"] == code
    assert term.exec(sid, "sh -c 'kill -INT $$'")["exit_code"] == 130


def test_cwd_follows_cd(term, tmp_path):
    sid = term.create("bash")["session"]
    odd = tmp_path / "a dir; with $(odd) chars"
    odd.mkdir()
    r = term.exec(sid, f"cd '{odd}'")
    assert r["exit_code"] == 0 and r["cwd"] == str(odd)
    assert term.exec(sid, "pwd")["output"] == str(odd)


def test_a_fake_marker_printed_by_a_program_does_not_end_the_command(term):
    sid = term.create("bash")["session"]
    r = term.exec(sid, r"printf '\033]633;D;0\007\033]633;D;0;guessed\007'; echo after; (exit 4)")
    assert r["exit_code"] == 4 and r["output"].endswith("after")
    listed = term.call("term.list", {})["sessions"][0]
    assert listed["untrusted_markers"] >= 2


def test_multi_line_commands_and_heredocs_run_as_one_command(term):
    sid = term.create("bash")["session"]
    r = term.exec(sid, "echo a\necho b\n(exit 3)")
    assert (r["exit_code"], r["output"]) == (3, "a\nb")
    r = term.exec(sid, "cat <<'EOF'\nline 1\n  line $2\nEOF")
    assert (r["exit_code"], r["output"]) == (0, "line 1\n  line $2")


def test_a_command_reading_stdin_gets_what_term_write_types(term):
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    t, box = term.exec_in_thread(sid, 'read -r x; echo "got:$x"')
    cmds.next_event("start")
    term.call("term.write", {"session": sid, "data": "hello there\r"})
    t.join(30)
    assert box["reply"]["output"].endswith("got:hello there")
    assert box["reply"]["exit_code"] == 0


def test_binary_output_passes_through_the_stream_untouched(term):
    sid = term.create("bash")["session"]
    out = term.output(sid)
    r = term.exec(sid, r"printf 'B<\000\001\377\376>B'")
    assert r["exit_code"] == 0
    out.until(lambda d: b"B<\x00\x01\xff\xfe>B" in d)


def test_ten_megabytes_of_output_arrive_whole_and_the_reply_keeps_the_end(term):
    sid = term.create("bash")["session"]
    out = RawOutput(term.client, sid)
    term.opened.append(out)
    out.wait_live()
    # read while it runs: a subscriber that does not read holds the shell back
    t, box = term.exec_in_thread(sid, r"head -c 10000000 /dev/zero | tr '\0' y; echo; echo end")
    data = out.until(lambda d: re.search(rb"\r\nend\r\n", d) is not None, timeout=120)
    assert sum(len(m) for m in re.findall(rb"y{1000,}", data)) == 10_000_000
    t.join(60)
    r = box["reply"]
    assert r["exit_code"] == 0
    # (the last max_output_bytes, 1 MiB, of it, said in `truncated`, not in the text)
    assert r["truncated"] is True and r["output"].endswith("y\nend")
    assert r["output"] == "y" * (len(r["output"]) - 4) + "\nend"
    small = term.exec(sid, "echo small")
    assert (small["output"], small["truncated"]) == ("small", False)


def test_a_user_prompt_command_and_debug_trap_still_run_with_the_status(spawn_actor, client,
                                                                        tmp_path):
    home = make_home(tmp_path, bashrc=(
        'PROMPT_COMMAND=\'echo "pc:$?" >> ~/pc.log\'\n'
        "trap 'echo \"dbg:$BASH_COMMAND\" >> ~/dbg.log' DEBUG\n"))
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal")
    term = Term(client, home)
    sid = term.create("bash")["session"]
    assert term.exec(sid, "false")["exit_code"] == 1
    assert term.exec(sid, "echo $?")["output"] == "1"
    # the user's PROMPT_COMMAND runs after our D: one more command makes sure it has
    term.exec(sid, "true")
    log = (home / "pc.log").read_text().splitlines()
    assert log[log.index("pc:1") + 1] == "pc:0"  # after `false`, then after `echo $?`
    assert "dbg:false" in (home / "dbg.log").read_text().splitlines()


def test_with_extdebug_on_every_command_runs_and_is_recorded_with_its_text(spawn_actor, client,
                                                                          tmp_path):
    # Under extdebug a DEBUG trap that fails skips the command: ours must not fail when it
    # has nothing to say (most commands).
    home = make_home(tmp_path, bashrc="shopt -s extdebug\n")
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal")
    term = Term(client, home)
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    assert term.exec(sid, "echo one; echo two")["output"] == "one\ntwo"
    assert cmds.next_event("end")["exit_code"] == 0  # (the exec's record)
    # a plain line (sent as it is) and one with `;` and `\` (escaped)
    for line in ("echo spaced out", "echo 'a;b\\c'"):
        term.call("term.write", {"session": sid, "data": line.encode() + b"\r"})
        end = cmds.next_event("end")
        assert end["command"] == line and end["exit_code"] == 0


def test_the_nonce_does_not_reach_the_shells_environment(term):
    sid = term.create("bash")["session"]
    # (the suite's own MOORAGE_SCHEMA_* variables, conftest.py, are the tests', not the tree's)
    assert term.exec(sid, "env | grep MOORAGE_ | grep -vc ^MOORAGE_SCHEMA_")["output"] == "0"


def test_cwd_env_and_args_never_pass_through_a_shell_string(term, tmp_path):
    odd = tmp_path / "$(touch pwned)"
    odd.mkdir()
    s = term.create("bash", cwd=str(odd), env=env_for(term.home) | {"X": "$(touch pwned2); `id`"})
    assert term.exec(s["session"], "pwd")["output"] == str(odd)
    assert term.exec(s["session"], 'printf %s "$X"')["output"] == "$(touch pwned2); `id`"
    assert not list(tmp_path.rglob("pwned*"))


@pytest.mark.skipif(not HAS_ZSH, reason="zsh not installed (CI installs it)")
def test_zsh_runs_with_integration_and_keeps_zdotdir_and_histfile_the_users(term):
    (term.home / ".zshrc").write_text("HISTFILE=${ZDOTDIR:-$HOME}/.zsh_history\n")
    s = term.create("zsh")
    assert s["mode"] == "integration" and s["kind"] == "zsh"
    sid = s["session"]
    r = term.exec(sid, "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (0, "test", "integration")
    assert term.exec(sid, "false")["exit_code"] == 1
    assert term.exec(sid, "cd /tmp")["cwd"] == "/tmp"
    r = term.exec(sid, 'echo "${ZDOTDIR-unset} $HISTFILE"')
    assert r["output"] == f"unset {term.home}/.zsh_history"
    assert term.exec(sid, "printf 'a\\nb\\n'")["output"] == "a\nb"


# --- the fallback chain --------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["sh", "dash"])
def test_sh_and_dash_run_without_integration_and_exit_code_none(term, shell):
    if shell == "dash" and not HAS_DASH:
        pytest.skip("dash not installed")
    s = term.create(shell)
    assert s["mode"] == "no_integration" and s["kind"] == "sh"
    r = term.exec(s["session"], "echo test")
    assert r == r | {"exit_code": None, "output": "test", "mode": "no_integration",
                     "trusted": False}


def test_integration_off_gives_the_fallback_mode(term):
    s = term.create("bash", integration=False)
    assert s["mode"] == "no_integration"
    r = term.exec(s["session"], "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "test", "no_integration")


@pytest.mark.parametrize("term_config", [{"quiet_ms": 200, "integration_detect_ms": 400}])
def test_a_shell_whose_integration_never_shows_falls_back_to_no_integration(term):
    (term.home / ".bashrc").write_text("exec sh\n")  # replaces bash before the hooks
    s = term.create("bash")
    assert s["mode"] == "no_integration"
    r = term.exec(s["session"], "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "test", "no_integration")


@pytest.mark.parametrize("term_config", [{"quiet_ms": 200, "integration_detect_ms": 400}])
def test_a_shell_slower_than_the_detection_to_its_first_prompt_gets_its_integration_back(
        term, tmp_path):
    """A slow rc file (a lock, a network mount) keeps the first prompt past
    integration_detect_ms: the session settles without integration, and the first trusted
    prompt marker brings it back, exit codes and all, instead of never."""
    gate = tmp_path / "rc-gate"
    os.mkfifo(gate)
    (term.home / ".bashrc").write_text(f"read _ < {gate}\n")
    sid = term.create("bash")["session"]
    assert term.call("term.list", {})["sessions"][0]["mode"] == "no_integration"
    open_gate(gate)
    wait_for(lambda: term.call("term.list", {})["sessions"][0]["mode"] == "integration",
             "the first prompt's marker")
    r = term.exec(sid, "cd /; (exit 7)")
    assert (r["exit_code"], r["mode"], r["cwd"]) == (7, "integration", "/")
    assert term.call("term.list", {})["sessions"][0]["integration_back"] == 1


@pytest.mark.parametrize("term_config", [{"quiet_ms": 200, "integration_detect_ms": 400}])
def test_a_command_sent_before_the_integration_came_back_ends_at_its_own_marker(
        term, tmp_path):
    """A command sent while the slow rc file still runs (the session settled without
    integration) is read after the first prompt, whose marker brings the integration back:
    it ends at its own D, not at a quiet spell, so the next command is not typed into it
    and answered by its D (another command's output, marked trusted)."""
    gate = tmp_path / "rc-gate"
    os.mkfifo(gate)
    (term.home / ".bashrc").write_text(f"read _ < {gate}\n")
    sid = term.create("bash")["session"]
    assert term.call("term.list", {})["sessions"][0]["mode"] == "no_integration"
    t, box = term.exec_in_thread(sid, "echo one; sleep 1; echo two")

    def typed_ahead() -> bool:  # (the tty echoes what waits to be read)
        r = term.client.request("terminal", "term.scrollback", {"session": sid})
        return b"echo two" in r.attachments[0]

    wait_for(typed_ahead, "the command typed ahead of the rc file's end")
    open_gate(gate)
    t.join(60)
    r = box["reply"]
    assert (r["exit_code"], r["mode"], r["trusted"], r["output"]) == \
        (None, "no_integration", False, "one\ntwo")
    r = term.exec(sid, "echo three")
    assert (r["exit_code"], r["mode"], r["trusted"], r["output"]) == \
        (0, "integration", True, "three")


@pytest.mark.parametrize("term_config", [{"quiet_ms": 200}])
def test_without_integration_a_shell_that_marks_its_commands_ends_each_at_its_marker(term):
    """Quality 1 turns the integration off: no exit code, no trust. The shell still marks
    where each command ends, so a pause in a command's output is not its end (its output
    after the pause would reach no caller, and the next command would be typed into it)."""
    sid = term.create("bash")["session"]
    assert term.call("sys.pressure", told("high", 1))["done"][
        "integration"] is False
    r = term.exec(sid, "echo one; sleep 1; echo two")  # (a pause longer than quiet_ms)
    assert (r["exit_code"], r["mode"], r["trusted"]) == (None, "no_integration", False)
    assert r["output"] == "one\ntwo"
    r = term.exec(sid, "echo three")
    assert r["output"] == "three"
    r = term.exec(sid, "echo a; sleep 1\necho b")  # two lines: one paste, one end
    assert r["output"] == "a\nb"
    term.call("sys.pressure", told("normal", 3))
    assert term.exec(sid, "false")["exit_code"] == 1


def test_creation_walks_past_a_missing_shell_and_one_that_dies_at_start(term):
    s = term.create("/no/such/shell")
    assert s["attempts"] == [{"shell": "/no/such/shell", "error": "not found"}]
    assert s["kind"] == "bash" and s["mode"] == "integration"
    (term.home / ".bashrc").write_text("exit 3\n")
    s = term.create("bash")
    assert s["kind"] == "sh" and s["shell"] == "/bin/sh"  # default_shell
    assert "exited at start" in s["attempts"][0]["error"]


# --- typing, resizing, signals, timeouts, exit ------------------------------------------------


def test_resize_reaches_the_pty(term):
    sid = term.create("bash")["session"]
    assert term.call("term.resize", {"session": sid, "cols": 100, "rows": 40}) == {
        "cols": 100, "rows": 40}
    assert term.exec(sid, "stty size")["output"] == "40 100"


def test_a_resize_is_told_to_every_window_of_the_session(term):
    """Another window showing the session learns its new size (and only from a resize that
    took effect: a refused one tells nothing)."""
    sid = term.create("bash")["session"]
    other = term.client.subscribe("terminal", ["term.session"], from_seq=1)
    term.opened.append(other)
    with pytest.raises(MoorageError):
        term.call("term.resize", {"session": sid, "cols": 0, "rows": 40})
    term.call("term.resize", {"session": sid, "cols": 132, "rows": 50})
    ev = other.next(timeout=30)
    assert ev is not None and ev.body == {"session": sid, "event": "resized", "cols": 132,
                                          "rows": 50}
    [listed] = [x for x in term.call("term.list", {})["sessions"] if x["session"] == sid]
    assert (listed["cols"], listed["rows"]) == (132, 50)


# Prints once it is the foreground job (job control has given it the terminal before exec);
# `st''arted` so that the terminal's echo of the typed line does not match.
FOREGROUND_SLEEP = "sh -c 'echo st''arted; exec sleep 30'"


def test_ctrl_c_through_term_signal_interrupts_the_foreground_job(term):
    sid = term.create("bash")["session"]
    out = term.output(sid)
    t, box = term.exec_in_thread(sid, FOREGROUND_SLEEP)
    out.until(lambda d: b"started" in d)
    r = term.call("term.signal", {"session": sid, "signal": "INT"})
    assert r["signal"] == 2 and r["pgid"] > 0
    t.join(30)
    assert box["reply"]["exit_code"] == 130


def test_typed_input_runs_and_is_recorded_as_a_command(term):
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    assert term.call("term.write", {"session": sid, "data": b"echo typed; (exit 6)\r"}) == {
        "queued": 21}
    start = cmds.next_event("start")
    end = cmds.next_event("end")
    assert start["command"].startswith("echo typed") and end["command"] == start["command"]
    assert end["exit_code"] == 6 and end["end_offset"] > end["start_offset"]


def test_a_command_past_its_timeout_gets_sigint_then_a_timeout_error(term):
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    err = expect_error("timeout", term.exec, sid, "sleep 30", timeout_ms=300)
    assert err.error.detail["signalled"] == "SIGINT"
    assert cmds.next_event("end")["exit_code"] == 130
    assert term.exec(sid, "echo ok")["output"] == "ok"


def test_a_resent_exec_that_timed_out_gets_its_answer_again_and_never_runs_twice(term):
    """The command ran and was stopped: its `timeout` tells of an effect, so a resend of the
    identical frames (a client whose reply was lost) hears it again from the reply cache."""
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    runs = term.home / "runs"
    frames = encode_request(7, "sid-resend", "term.exec", {
        "session": sid, "command": f"echo run >> {runs}; sleep 30", "timeout_ms": 300})
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints.rpc(term.client.runtime_dir, "terminal"))
    try:
        answers = []
        for _ in range(2):
            sock.send_multipart(frames)
            assert sock.poll(30_000), "no reply to term.exec"
            answers.append(sock.recv_multipart())
    finally:
        sock.close(0)
        ctx.term()
    first = decode_reply(answers[0])
    assert not first.ok and first.body["name"] == "timeout"
    assert first.body["detail"]["signalled"] == "SIGINT"
    assert answers[1] == answers[0]
    assert cmds.next_event("end")["exit_code"] == 130  # (the SIGINT ended it)
    # A second run would have been answered before the resend's reply: the session runs one
    # command at a time, so this one comes after any such run.
    assert term.exec(sid, f"cat {runs}")["output"] == "run"


ESCAPES = "import sys; sys.stdout.buffer.write(b'\\x1b[31mred\\x1b[0m \\x1bP1\\x1b\\\\ ' * 40000)"


def test_escape_heavy_output_is_cleaned_whole_and_the_loop_serves_while_it_is(term):
    """A DCS in each line sends the output through the parser, at about a microsecond a
    byte: the answer's text is made a slice a loop turn, so a request that comes after the
    command ended is answered before the command is, and the text is clean() of it all."""
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    t, box = term.exec_in_thread(sid, f'python3 -c "{ESCAPES}"')
    cmds.next_event("end")
    assert term.call("sys.ping", {}) and "reply" not in box  # (answered between slices)
    t.join(60)
    payload = b"\x1b[31mred\x1b[0m \x1bP1\x1b\\ " * 40000
    assert box["reply"]["output"] == clean(payload).rstrip("\n")


def test_a_second_create_of_an_id_whose_first_is_under_way_is_a_conflict(term):
    """Two creates of one id sent back to back: the second comes while the first's shell
    starts (it is answered at its prompt), and is refused `conflict`, as it is after."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints.rpc(term.client.runtime_dir, "terminal"))
    args = {"shell": "bash", "env": env_for(term.home), "session": "dup"}
    try:
        for rid in (1, 2):
            sock.send_multipart(encode_request(rid, "sid-dup", "term.create", args))
        replies = {}
        while len(replies) < 2:
            assert sock.poll(30_000), "a create went unanswered"
            r = decode_reply(sock.recv_multipart())
            replies[r.id] = r
    finally:
        sock.close(0)
        ctx.term()
    assert replies[1].ok and replies[1].body["session"] == "dup"
    assert not replies[2].ok and replies[2].body["name"] == "conflict", replies[2].body
    expect_error("conflict", term.create, "bash", session="dup")
    assert [s["session"] for s in term.call("term.list", {})["sessions"]] == ["dup"]


def test_what_a_shell_could_not_be_given_is_refused_before_anything_starts(term):
    expect_error("bad_args", term.create, "bash", env={"BIG": "x" * (256 << 10)})
    sid = term.create("bash")["session"]
    for timeout_ms in (0, 24 * 3600 * 1000 + 1, 2**64 - 1):
        expect_error("bad_args", term.exec, sid, "echo no", timeout_ms=timeout_ms)
    assert term.exec(sid, "echo ok", timeout_ms=24 * 3600 * 1000)["output"] == "ok"


@pytest.mark.parametrize("shell", ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    not HAS_ZSH, reason="zsh is not installed (.ci/run installs it)"))])
def test_an_incomplete_command_is_refused_and_the_session_keeps_its_integration(term, shell):
    """The shell's continuation prompt (PS2, marked OSC 133 A k=s) says the line was not a
    whole command: its input is cancelled and the call answered bad_args at once, where it
    waited 5 s, gave the integration up for good and read the next commands into the open
    quote, answering them ok."""
    sid = term.create(shell)["session"]
    for incomplete in ("echo 'unterminated", "echo trailing \\", "if true; then"):
        err = expect_error("bad_args", term.exec, sid, incomplete)
        assert "not a whole command" in str(err)
        r = term.exec(sid, "echo $((6*7))")
        assert (r["output"], r["exit_code"], r["mode"]) == ("42", 0, "integration")
    # whole commands over several lines still run
    assert term.exec(sid, "if true; then\n  echo yes\nfi")["output"] == "yes"
    assert term.exec(sid, "cat <<EOF\nhere\nEOF")["output"] == "here"
    assert term.call("term.list", {})["sessions"][0]["mode"] == "integration"


def test_a_command_sent_line_by_line_runs_whole_though_the_shell_asks_for_its_lines(term):
    """Without the integration (quality 1) a command's lines go one by one, and the shell's
    continuation prompt between them is no sign of an incomplete command."""
    sid = term.create("bash")["session"]
    marker = term.home / "lines"
    term.call("sys.pressure", told("normal", 1))
    r = term.exec(sid, f"echo first > {marker}\nfor i in 1 2\ndo echo $i >> {marker}\ndone")
    assert r["mode"] == "no_integration"
    assert marker.read_text() == "first\n1\n2\n"
    term.call("sys.pressure", told("normal", 3))


def test_an_answer_being_cleaned_when_the_terminal_stops_is_sent_not_lost(term):
    """The command ran to its end (recorded as run, so a successor refuses to run it again):
    its answer, cleaned a slice a turn, is finished at the stop rather than dropped."""
    sid = term.create("bash")["session"]
    cmds = term.commands(sid)
    t, box = term.exec_in_thread(sid, f'python3 -c "{ESCAPES}"')
    cmds.next_event("end")
    term.call("sys.stop", {})
    t.join(60)
    assert "reply" in box, box.get("error")
    assert box["reply"]["output"].startswith("red  red")


# The timeout of a command that outlives it: past what comes before it on a loaded machine
# (the shell reading the line, then printing its first output at once: tens of ms here).
OUTLIVED_MS = 2500


def test_a_timed_out_commands_output_starts_where_a_sequence_or_a_line_does(term):
    """The answer keeps the output's last characters, cleaned from its last 16 KiB: cut
    inside a long sequence (a sixel image), that sequence's bytes came out as text."""
    sid = term.create("bash")["session"]
    sixel = "\\033Pq" + "#0;2;0;0;0~~@@" * 3000 + "\\033\\\\"
    # (printed by the shell itself at once; the command outlives its timeout: that is what
    # the test is about)
    outlives = "sleep 30"  # sleep-ok: the command's own, not a wait of the test's
    err = expect_error("timeout", term.exec, sid,
                       f"printf 'hello\\n{sixel}waiting\\n'; {outlives}", timeout_ms=OUTLIVED_MS)
    output = err.error.detail["output"]
    assert output.rstrip("\n").endswith("waiting") and "#0;2;0" not in output, output[:200]


def test_a_timed_out_command_with_a_long_line_and_no_output_answers_no_output(term):
    """Cut inside the shell's 633;E, which carries the command line (longer than the 16 KiB
    kept), before any output: the line's text is not the command's output."""
    sid = term.create("bash")["session"]
    outlives = "sleep 30"  # sleep-ok: the command's own, not a wait of the test's
    err = expect_error("timeout", term.exec, sid, f": {'x' * 20_000}; {outlives}",
                       timeout_ms=OUTLIVED_MS)
    assert err.error.detail["output"] == ""


def test_exit_inside_a_session_ends_it_with_its_code(term):
    sid = term.create("bash")["session"]
    r = term.exec(sid, "exit 7")
    assert r["exit_code"] == 7
    (listed,) = term.call("term.list", {})["sessions"]
    assert listed["state"] == "exited" and listed["exited"]["code"] == 7
    expect_error("shell_exited", term.exec, sid, "echo no")
    assert term.call("term.close", {"session": sid}) == {"closed": sid}
    assert term.call("term.list", {})["sessions"] == []


def test_bad_requests_get_classified_errors_and_the_actor_serves_on(term):
    expect_error("session_not_found", term.exec, "nope", "echo")
    expect_error("bad_args", term.create, "bash", cols=0)
    expect_error("bad_args", term.create, "bash", cwd="/no/such/dir")
    expect_error("bad_args", term.create, "bash", env={"A=B": "x"})
    sid = term.create("bash")["session"]
    expect_error("bad_args", term.call, "term.signal", {"session": sid, "signal": "SIGNOPE"})
    cmds = term.commands(sid)
    out = term.output(sid)
    term.call("term.write", {"session": sid, "data": FOREGROUND_SLEEP + "\r"})
    out.until(lambda d: b"started" in d)
    expect_error("session_busy", term.exec, sid, "echo")
    term.call("term.signal", {"session": sid})
    assert cmds.next_event("end")["exit_code"] == 130
    assert term.exec(sid, "echo fine")["output"] == "fine"


# --- output: scrollback, offsets --------------------------------------------------------------


@pytest.mark.parametrize("term_config", [{"scrollback_bytes": 65536, "shells": ["bash"]}])
def test_scrollback_is_addressed_by_absolute_offset_and_reports_what_it_lost(term):
    sid = term.create("bash")["session"]
    out = term.output(sid)
    term.exec(sid, "echo one")
    reply = term.client.request("terminal", "term.scrollback", {"session": sid,
                                                                "from_offset": 0})
    data = out.until(lambda d: len(d) >= reply.body["to"])  # the stream is the same bytes
    assert reply.body["from"] == 0 and reply.attachments[0] == data[: reply.body["to"]]
    term.exec(sid, "seq 1 50000")
    reply = term.client.request("terminal", "term.scrollback", {"session": sid,
                                                                "from_offset": 10})
    body = reply.body
    full = out.until(lambda d: len(d) >= body["to"])
    assert body["lost"] == [10, body["first"]] and body["first"] > 10
    assert reply.attachments[0] == full[body["from"] : body["to"]]
    tail = term.client.request("terminal", "term.scrollback", {"session": sid,
                                                               "max_bytes": 100})
    end = tail.body["to"]
    full = out.until(lambda d: len(d) >= end)
    assert len(tail.attachments[0]) == 100 and tail.attachments[0] == full[end - 100 : end]


# --- pressure, big input, many sessions ----------------------------------------------------


def test_degraded_quality_turns_integration_off_and_the_reply_says_so(term):
    sid = term.create("bash")["session"]
    done = term.call("sys.pressure", told("high", 1))["done"]
    assert done["integration"] is False and "scrollback_trimmed" in done
    r = term.exec(sid, "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "test", "no_integration")
    term.call("sys.pressure", told("normal", 3))
    r = term.exec(sid, "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (0, "test", "integration")


def test_a_one_megabyte_paste_is_queued_without_stalling_the_actor(term):
    sid = term.create("bash")["session"]
    other = term.create("bash")["session"]
    cmds = term.commands(sid)
    term.call("term.write", {"session": sid, "data": "cat > ~/paste.txt\r"})
    cmds.next_event("start")
    line = b"x" * 99 + b"\n"
    paste = line * 10_486  # 1 MB, more than the PTY takes at once
    assert term.call("term.write", {"session": sid, "data": paste})["queued"] == len(paste)
    assert term.exec(other, "echo alive")["output"] == "alive"  # served meanwhile
    term.call("term.write", {"session": sid, "data": b"\x04"})  # ^D: end of input
    assert cmds.next_event("end", timeout=60)["exit_code"] == 0
    assert (term.home / "paste.txt").read_bytes() == paste


@pytest.mark.slow
def test_a_hundred_sessions_running_commands_at_once_nearly_all_succeed(term):
    n = 100
    created = term.client.pipeline("terminal", [
        ("term.create", {"shell": "bash", "env": env_for(term.home)})] * n,
        window=n, timeout=120)
    sids = [c["session"] for c in created if isinstance(c, dict)]
    results = term.client.pipeline("terminal", [
        ("term.exec", {"session": s, "command": f"echo r7-{i}; (exit {i % 3})"})
        for i, s in enumerate(sids)], window=n, timeout=120)
    ok = sum(1 for i, r in enumerate(results)
             if isinstance(r, dict) and (r["exit_code"], r["output"]) == (i % 3, f"r7-{i}"))
    assert ok >= 99, [r for r in results if not isinstance(r, dict)][:3]


def test_output_held_for_its_burst_all_arrives_and_acks_count_what_was_published(term):
    """Output that follows other output closely waits up to output_coalesce_ms for the rest
    of its burst (outbuf.py): every byte still comes, in order, whether the prompt sends it
    or the window's end does (input echoed with no prompt after it). An ack never counts a
    byte that was read but not yet sent."""
    sid = term.create("bash")["session"]
    out = term.output(sid)
    r = term.exec(sid, "for i in $(seq 1 300); do echo line $i; done")
    assert r["exit_code"] == 0 and r["output"].split("\n")[-1] == "line 300"
    out.until(lambda d: b"\x1b]633;B;" in d[d.rfind(b"line 300"):])  # the prompt is back
    for piece in ("echo ", "not ", "run"):  # typed, not entered: echoed, then nothing
        term.call("term.write", {"session": sid, "data": piece})

    def offset() -> int:
        return term.call("term.list", {})["sessions"][0]["offset"]

    data = out.until(lambda d: d.endswith(b"echo not run") and len(d) == offset())
    back = term.client.request("terminal", "term.scrollback", {"session": sid,
                                                               "from_offset": 0})
    assert back.body["from"] == 0 and back.attachments[0] == data
    ack = term.call("term.ack", {"session": sid, "offset": len(data) + 1000})
    assert ack["acked"] == ack["offset"] == len(data)
    info = term.client.call("terminal", "sys.info")
    assert info["output"]["held_bytes"] == 0
    assert 0 < info["output"]["messages"] <= info["output"]["pieces"]

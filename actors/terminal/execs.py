"""A command run by `term.exec` as its session tracks it, the text helpers that cut a
command's output out of the stream when no markers say where it is, and what the terminal
itself says of who reads it (session.py)."""

from __future__ import annotations

import fcntl
import os
import re
import struct
import termios
from dataclasses import dataclass

from moorage.actors.runtime import Call
from moorage.actors.terminal.keeper.ptys import TIOCGPTPEER

# zsh's PROMPT_SP: after a command, the end-of-line mark, spaces to the margin, "\r \r"
ZSH_PROMPT_SP = re.compile(r"[%#]? *\r \r$")


@dataclass
class Exec:
    call: Call
    command: str
    mode: str
    started: float  # monotonic
    sent_off: int  # the stream offset when the command was written
    deadline: float  # monotonic: SIGINT and the timeout error after this
    detect_by: float  # monotonic: no trusted marker by then, no integration
    out_start: int | None = None  # after the trusted C
    done: bool = False
    sent: bool = False  # its input reached the keeper: from then on it may have run
    # Not sent yet: its shell was not at its prompt (the last trusted marker not B), and a
    # command typed then goes into whatever the shell reads (a question, a line of its own,
    # a prompt not yet drawn). It goes at the next B; `sent_off` is set then.
    held: bool = False
    # Its input went as one unit the shell reads whole (a line, or a bracketed paste): only
    # then does a continuation prompt before its start say the command is incomplete.
    whole: bool = False
    # Run without integration (quality 1 and 0) in a shell that still marks its commands:
    # it ends at its trusted D, as an integrated one does (a quiet spell is no end: output
    # after it would go to no caller, and the next command into this one), its exit code
    # unreported, as without integration.
    until_marked: bool = False
    # monotonic: since when the shell has been back in its line editor after the command's C
    # without a D (a shell exec'd in its place, which has no nonce, never marks)
    editing_since: float | None = None
    # the shell's CPU time (clock ticks) when the detection last looked: a shell whose time
    # moved on is still at work on the command (reading a long paste, running its hooks)
    shell_cpu: int | None = None

    @property
    def marked(self) -> bool:
        """Does it end at its trusted D (with the integration, or `until_marked`)?"""
        return self.mode == "integration" or self.until_marked


def cut_echo_and_prompt(text: str, command: str, prompt: str | None) -> str:
    """Without markers, the output also holds the shell's echo of the command and the next
    prompt: cut the first from the front and the second from the end, when they are there.
    The prompt is the one seen at start-up, or what preceded the command on its echo line."""
    lines = [line.lstrip("\r") for line in text.split("\n")]
    prompts = {prompt.rstrip()} if prompt else set()
    for i, cmd_line in enumerate(command.split("\n")):
        cmd_line = cmd_line.rstrip()
        if not lines or not lines[0].rstrip().endswith(cmd_line):
            break
        echo = lines.pop(0).rstrip()
        if i == 0 and cmd_line:
            prompts.add(echo[: len(echo) - len(cmd_line)].rstrip())
    # (the last line as it shows: what follows its last carriage return)
    if lines and prompts and lines[-1].rsplit("\r", 1)[-1].rstrip() in prompts - {""}:
        lines.pop()
    return "\n".join(lines)


CUT_BEFORE = 512  # how far before it the start of a sequence the cut fell in is looked for


def clean_cut(before: bytes, after: bytes) -> int:
    """How many bytes of `after` to leave out so that output cut at a byte count (`before`
    the bytes just ahead of the cut, `after` those from it on) starts as text does: not in
    the middle of an escape sequence (a colour's `38;5;196m` would be its text; an OSC's
    payload, the shell's 633;E carrying the command line) nor of a UTF-8 character (one or
    two U+FFFD). A sequence that does not end in `after` is left as cut; a string begun
    more than CUT_BEFORE ahead is known by its terminator."""
    esc = before.rfind(b"\x1b")
    if esc >= 0:
        seq = before[esc + 1:] + after
        done = len(before) - esc - 1  # (bytes of the sequence before the cut, ESC aside)
        end = _sequence_end(seq)
        if end > done:
            return end - done
    else:
        # No ESC so far back: inside a string longer than that (an OSC's payload, as a long
        # command line in the shell's 633;E, or a DCS's, as sixel's) when its terminator
        # (BEL, ST) comes before any other ESC
        nxt = after.find(b"\x1b")
        bel = after.find(b"\x07", 0, len(after) if nxt < 0 else nxt)
        if bel >= 0:
            return bel + 1
        if nxt >= 0 and after[nxt + 1:nxt + 2] == b"\\":
            return nxt + 2
    at = 0
    while at < min(len(after), 3) and 0x80 <= after[at] < 0xC0:
        at += 1
    return at


def _sequence_end(seq: bytes) -> int:
    """The length of the escape sequence whose ESC came just before `seq` (CSI to its final
    byte, OSC to its BEL or ST, others to their final byte); 0 when it does not end in
    `seq`."""
    if seq[:1] == b"[":
        for i in range(1, len(seq)):
            if 0x40 <= seq[i] <= 0x7E:
                return i + 1
            if not 0x20 <= seq[i] <= 0x3F:
                return i  # (broken off: what follows is no part of it)
        return 0
    if seq[:1] in (b"]", b"P", b"_", b"^", b"X"):  # OSC, DCS and other strings
        bel = seq.find(b"\x07") if seq[:1] == b"]" else -1
        st = seq.find(b"\x1b\\")
        ends = [i + 1 for i in (bel,) if i >= 0] + [i + 2 for i in (st,) if i >= 0]
        return min(ends, default=0)
    i = 0
    while i < len(seq) and 0x20 <= seq[i] <= 0x2F:  # intermediates, then the final byte
        i += 1
    return i + 1 if i < len(seq) else 0


# --- the terminal's word: facts of the PTY, not guesses from the output ----------------------
# (each None when the terminal cannot be asked: no copy of its master here, or it is gone)



def shell_in_foreground(master: int | None, shell_pid: int) -> bool | None:
    """Is the shell's own process group the terminal's foreground one? Not while a program it
    started runs (job control gives each its own group): then the shell reads a command line,
    or runs a builtin itself."""
    if master is None or shell_pid <= 0:
        return None
    try:
        return os.tcgetpgrp(master) == shell_pid
    except OSError:
        return None


def line_editing(master: int | None) -> bool | None:
    """Is the terminal as a line editor (readline, zle) keeps it, neither canonical nor
    echoing? Commands and builtins such as `read` run with both on."""
    if master is None:
        return None
    try:
        lflag = termios.tcgetattr(master)[3]
    except (OSError, termios.error):
        return None
    return not lflag & (termios.ICANON | termios.ECHO)


def canonical(master: int | None) -> bool | None:
    """Is the terminal in canonical mode (the kernel's line editor: a reader gets whole
    lines), as a shell leaves it for the commands it runs? A program reading keys one at a
    time (vim, `read -n1`, readline itself) turns it off."""
    if master is None:
        return None
    try:
        return bool(termios.tcgetattr(master)[3] & termios.ICANON)
    except (OSError, termios.error):
        return None


# What ends, sends or drops the line the kernel's line editor holds (canonical mode): a line
# end, ^D (sends what is there), ^C, ^\ and ^Z (their signals flush the input), ^U (kills it)
_LINE_OVER = frozenset(b"\n\r\x04\x03\x1c\x1a\x15")
_ERASE = frozenset(b"\x7f\x08")


def pending_line(typed: bytes) -> bool:
    """Does what was typed to a terminal in canonical mode leave a line begun and not ended
    in the kernel's line editor? No reader gets it until it ends: the shell's line editor
    takes it at the next prompt, as the start of that prompt's line. (Erase and ^W edit it,
    one character or word at a time; UTF-8 characters erased whole, as with IUTF8.)"""
    line = bytearray()
    for b in typed:
        if b in _LINE_OVER:
            line.clear()
        elif b in _ERASE:
            while line and 0x80 <= line[-1] < 0xC0:  # (a UTF-8 character's continuation)
                line.pop()
            if line:
                line.pop()
        elif b == 0x17:  # ^W: the word before, and the blanks after it
            while line and line[-1] in b" \t":
                line.pop()
            while line and line[-1] not in b" \t":
                line.pop()
        else:
            line.append(b)
    return bool(line)


def runs_its_launch(pid: int, nonce: str) -> bool | None:
    """Is the session's shell still the program it was started as? Its first environment
    (/proc/PID/environ, fixed at its exec) holds the nonce it was given, which the
    integration removes from the environment at once: a shell exec'd in its place (`exec
    bash`) starts without it. None when that cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    return f"MOORAGE_NONCE={nonce}".encode() in env.split(b"\0")


def shell_activity(pid: int) -> tuple[bool, int] | None:
    """(runnable now, CPU time used in clock ticks) of the process `pid`, from
    /proc/PID/stat; None when that cannot be read. A shell waiting in its line editor
    sleeps and its time stands still; one reading or running is runnable, or its time
    moves, even on a machine too loaded to give it much."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # (the name, in parentheses, may hold spaces)
    try:
        return fields[0] == b"R", int(fields[11]) + int(fields[12])  # state, utime + stime
    except (IndexError, ValueError):
        return None


def unread_input(master: int | None) -> int | None:
    """Bytes of input the shell side has not read yet (whole lines, in canonical mode)."""
    if master is None:
        return None
    try:
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(slave, termios.TIOCINQ, b"\0" * 4))[0])
    except OSError:
        return None
    finally:
        os.close(slave)

"""A command run by `term.exec` as its session tracks it, and the text helpers that cut a
command's output out of the stream when no markers say where it is (session.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from moorage.actors.runtime import Call

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
    # Its input went as one unit the shell reads whole (a line, or a bracketed paste): only
    # then does a continuation prompt before its start say the command is incomplete.
    whole: bool = False
    # Run without integration (quality 1 and 0) in a shell that still marks its commands:
    # it ends at its trusted D, as an integrated one does (a quiet spell is no end: output
    # after it would go to no caller, and the next command into this one), its exit code
    # unreported, as without integration.
    until_marked: bool = False

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
    if lines and prompts and lines[-1].rstrip() in prompts - {""}:
        lines.pop()
    return "\n".join(lines)

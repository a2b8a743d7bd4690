"""How a shell is started with (or without) shell integration, without touching the user's
files: the argv and environment for the keeper to spawn.

  bash  `bash --init-file bash.sh -i`: the script reads ~/.bashrc (or, with -l, the login
        files) itself, then installs the markers. Only when the user gave no arguments or
        only -l/--login (VS Code's rule): other arguments may change what bash reads.
  zsh   `zsh -i [-l]` with ZDOTDIR pointing at zsh/ here, whose start-up files read the user's
        own (from the user's ZDOTDIR or HOME), install the hooks, and put ZDOTDIR and
        HISTFILE back as they were.
  other sh, dash, ksh, anything else: started as asked, without integration (the seed's
        fallback: commands run, exit codes are unknown).

The nonce travels in MOORAGE_NONCE, which the scripts remove from the environment. Nothing
here is a shell string: argv elements and environment values go to execve as they are.

Package data (pyproject `[tool.setuptools.package-data]`):
  actors = ["shell_integration/*.sh", "shell_integration/zsh/*.zsh",
            "shell_integration/zsh/.zshenv", "shell_integration/zsh/.zprofile",
            "shell_integration/zsh/.zshrc", "shell_integration/zsh/.zlogin"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASH_SCRIPT = HERE / "bash.sh"
ZSH_DIR = HERE / "zsh"

_LOGIN_ARGS = ([], ["-l"], ["--login"])
_SH_LIKE = {"sh", "dash", "ash", "ksh", "mksh", "posh", "busybox"}


@dataclass(frozen=True, slots=True)
class Launch:
    path: str
    argv: list[str]
    env: dict[str, str]
    kind: str  # bash | zsh | sh | other
    integration: bool  # markers expected


def kind_of(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("bash"):
        return "bash"
    if name.startswith("zsh"):
        return "zsh"
    if name in _SH_LIKE:
        return "sh"
    return "other"


def prepare(path: str, args: list[str], env: dict[str, str], nonce: str | None) -> Launch:
    """The launch of `path` with `args` and `env`; integrated when `nonce` is given and the
    shell and its arguments allow it."""
    kind = kind_of(path)
    name = os.path.basename(path)
    env = dict(env)
    login = args in (["-l"], ["--login"])
    if nonce and kind == "bash" and args in _LOGIN_ARGS:
        env["MOORAGE_NONCE"] = nonce
        if login:
            env["MOORAGE_SHELL_LOGIN"] = "1"
        return Launch(path, [name, "--init-file", str(BASH_SCRIPT), "-i"], env, kind, True)
    if nonce and kind == "zsh" and args in _LOGIN_ARGS:
        env["MOORAGE_NONCE"] = nonce
        user_dir = env.get("ZDOTDIR")
        env["MOORAGE_USER_ZDOTDIR"] = user_dir or env.get("HOME", os.path.expanduser("~"))
        if user_dir:
            env["MOORAGE_ZDOTDIR_SET"] = "1"
        env["ZDOTDIR"] = str(ZSH_DIR)
        if login:
            env["MOORAGE_SHELL_LOGIN"] = "1"
        return Launch(path, [name, "-i", *(["-l"] if login else [])], env, kind, True)
    return Launch(path, [name, *args], env, kind, False)

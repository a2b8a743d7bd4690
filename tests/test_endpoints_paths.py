"""Where an instance's directories are: never relative (they are named to processes in other
working directories: the ready line, the connection file, every endpoint), and a relative
$XDG_* is ignored as the XDG spec says (it would name a place in an editor's workspace)."""

from __future__ import annotations

import os
from pathlib import Path

from moorage.protocol import curve, endpoints

HOME = {"HOME": "/home/someone"}


def test_a_relative_xdg_dir_is_ignored_and_an_absolute_one_taken():
    rel = HOME | {"XDG_RUNTIME_DIR": "run", "XDG_STATE_HOME": "state",
                  "XDG_CONFIG_HOME": "cfg"}
    assert endpoints.runtime_dir("dev", rel) == Path(f"/tmp/moorage-{os.getuid()}/dev")
    assert endpoints.state_dir(Path("/x/dev"), "dev", rel) == Path(
        "/home/someone/.local/state/moorage/dev")
    assert curve.keys_dir(rel) == Path("/home/someone/.config/moorage/keys")
    absolute = HOME | {"XDG_RUNTIME_DIR": "/run/u", "XDG_STATE_HOME": "/s",
                       "XDG_CONFIG_HOME": "/c"}
    assert endpoints.runtime_dir("dev", absolute) == Path("/run/u/moorage/dev")
    assert endpoints.state_dir(Path("/x/dev"), "dev", absolute) == Path("/s/moorage/dev")
    assert curve.keys_dir(absolute) == Path("/c/moorage/keys")


def test_moorage_s_own_variables_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = HOME | {"MOORAGE_RUNTIME_DIR": "rt", "MOORAGE_STATE_DIR": "st",
                  curve.KEYS_ENV: "k"}
    assert endpoints.runtime_dir(None, env) == tmp_path / "rt"
    assert endpoints.state_dir(Path("/x/dev"), None, env) == tmp_path / "st"
    assert curve.keys_dir(env) == tmp_path / "k"

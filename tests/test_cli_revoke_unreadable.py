"""`moorage keys revoke` and allow-list files a tree refuses to trust: a file open to group
or others allows nothing today, but a later `chmod 600` would let its key in again, so a
revoke must take it as well as the trusted ones."""

from __future__ import annotations

import os
import shutil

import pytest

from moorage.protocol import curve
from tests.remote_support import keys_cli, make_keys

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("by", ["name", "key"])
@pytest.mark.parametrize("first_mode", [0o664, 0o600], ids=["both-open", "one-open"])
def test_revoke_takes_files_of_the_key_that_are_open_to_others(tmp_path, by, first_mode):
    """(Such files were skipped as unreadable: the revoke said there was no such key, or
    took only the private copy, and a `chmod 600` made the key allowed again.)"""
    server_dir, _, client = make_keys(tmp_path)
    allowed = server_dir / curve.ALLOWED
    shutil.copy(allowed / "editor.key", allowed / "laptop.key")
    os.chmod(allowed / "editor.key", first_mode)
    os.chmod(allowed / "laptop.key", 0o664)
    other = curve.new_pair()
    assert keys_cli(server_dir, "allow", other.public.decode(), "--name",
                    "other").returncode == 0
    target = "editor" if by == "name" else client.public.decode()
    out = keys_cli(server_dir, "revoke", target)
    assert out.returncode == 0, out.stderr
    assert str(allowed / "editor.key") in out.stdout, out.stdout
    assert str(allowed / "laptop.key") in out.stdout, out.stdout
    assert sorted(p.name for p in allowed.iterdir()) == ["other.key"]
    assert list(curve.read_allowed(server_dir).values()) == ["other"]


def test_revoke_still_refuses_a_directory_open_to_others(tmp_path):
    server_dir, _, _ = make_keys(tmp_path)
    allowed = server_dir / curve.ALLOWED
    os.chmod(allowed, 0o770)
    out = keys_cli(server_dir, "revoke", "editor")
    assert out.returncode == 2 and "open to group or others" in out.stderr, out
    assert (allowed / "editor.key").exists()


def test_revoking_a_key_that_is_not_allowed_is_bad_input(tmp_path):
    """Exit 2, as every command's input that names nothing there (the exit code table)."""
    server_dir, _, _ = make_keys(tmp_path)
    out = keys_cli(server_dir, "revoke", "nobody")
    assert out.returncode == 2 and "no allowed key is named or equal to 'nobody'" in \
        out.stderr, out
    assert (server_dir / curve.ALLOWED / "editor.key").exists()

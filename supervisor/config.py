"""The configuration document: the embedded default, overridden by the user's moorage.toml.

Found at `--config FILE`, else `$MOORAGE_CONFIG`, else `$XDG_CONFIG_HOME/moorage/moorage.toml`
(`~/.config/moorage/moorage.toml`). Never in the working directory: an editor starts the tree
in the user's workspace, and a file there must not replace the tree or name code for it to
run. For the same reason `start =` may name only modules of this package unless the caller
allows external actors (`moorage up --allow-external-actors`), and those are looked up on the
interpreter's path as it is (`PYTHONPATH`), which never holds the working directory
(supervisor/cli/commands.py, keep_workspace_off_path).

A file another user could have written is refused, as ssh refuses such a config of its own
(`check_owner`): it names the programs the tree runs (a terminal's shells, `start =`).

The whole merged document is checked (schema.py) before it is used.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import stat
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from moorage.protocol import endpoints
from moorage.supervisor.schema import Document, check_document, check_table
from moorage.supervisor.spec import ConfigError, SupervisorSpec, parse_tree

PACKAGE = "moorage"
OWN_PACKAGES = ("moorage.actors", "moorage.protocol", "moorage.supervisor")


def default_document() -> dict[str, Any]:
    text = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def find_config(explicit: str | Path | None,
                env: Mapping[str, str] | None = None) -> Path | None:
    """The user's moorage.toml, if any: --config, $MOORAGE_CONFIG, $XDG_CONFIG_HOME. Something
    there that is not a file is a ConfigError, as a --config that is not one."""
    env = os.environ if env is None else env
    for given, what in ((explicit, "--config"), (env.get("MOORAGE_CONFIG"), "MOORAGE_CONFIG")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise ConfigError(f"{what}: {p} is not a file")
            return p
    # A relative $XDG_CONFIG_HOME is ignored, as the XDG spec says: it would name a file in
    # the working directory (an editor's workspace).
    xdg = env.get("XDG_CONFIG_HOME") or ""
    if os.path.isabs(xdg):
        base = xdg
    else:
        try:
            base = str(endpoints.home(env, "XDG_CONFIG_HOME") / ".config")
        except ValueError:  # no home, so no file in it to find: the embedded default
            return None
    p = Path(base) / "moorage" / "moorage.toml"
    if p.is_file():
        return p
    if os.path.lexists(p):  # (a dangling link to a dotfiles checkout: not the defaults, unsaid)
        what = (f"a symbolic link to {os.readlink(p)}, which is not a file"
                if p.is_symlink() else "not a file")
        raise ConfigError(f"{p}: {what}; fix it, remove it to run on the defaults, or name "
                          "another with --config")
    return None


def private_group(gid: int, uid: int) -> bool:
    """Is `gid` the user's own group, which no one else is in? Where each user has one (the
    umask 002 of Fedora's, RHEL's and Ubuntu's users), a file the user writes is group
    writable, and no one else can write it (the rule those systems' ssh keeps)."""
    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:
        return False
    return (group.gr_gid == user.pw_gid and group.gr_name == user.pw_name
            and all(m == user.pw_name for m in group.gr_mem))


def check_owner(path: Path) -> None:
    """ConfigError unless only this user (or root) can have written `path`: the file owned by
    either and writable by neither others nor a group (the user's private group aside), and
    the directory holding it (the
    link's and the file's, when it is a symbolic link) owned by either and writable by
    others only when sticky (/tmp). Root-owned files in root's directories (/etc) pass."""
    uid = os.getuid()
    st = path.stat()
    if st.st_uid not in (uid, 0):
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by uid {uid} or root: "
                          "another user may have chosen what it says")
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not private_group(st.st_gid, uid)):
        raise ConfigError(f"{path}: writable by group or others (mode "
                          f"{stat.S_IMODE(st.st_mode):o}); `chmod go-w` it")
    for d in dict.fromkeys([path.absolute().parent, path.resolve().parent]):
        ds = d.stat()
        if ds.st_uid not in (uid, 0):
            raise ConfigError(f"{path}: its directory {d} is owned by uid {ds.st_uid}, not "
                              f"by uid {uid} or root: another user may replace the file")
        if ds.st_mode & stat.S_IWOTH and not ds.st_mode & stat.S_ISVTX:
            raise ConfigError(f"{path}: its directory {d} is writable by others (mode "
                              f"{stat.S_IMODE(ds.st_mode):o}): any user may replace the file")


def check_starts(tree: SupervisorSpec, allow_external: bool) -> None:
    """Every `start =` names a module that exists, of this package unless `allow_external`."""
    for owner, c in tree.walk():
        if not c.start:
            continue
        module = c.start.partition(":")[0]
        where = f"{owner.id}.children.{c.id}.start"
        own = module.startswith(tuple(p + "." for p in OWN_PACKAGES))
        if not own and not allow_external:
            raise ConfigError(f"{where}: {module!r} is not a module of {PACKAGE}; actors from "
                              "elsewhere run only with `moorage up --allow-external-actors`")
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot find module {module!r}: {exc}") from None
        if found is None:
            raise ConfigError(f"{where}: no module {module!r}")
        if own and not _inside_package(found.origin):
            raise ConfigError(f"{where}: {module!r} is not the installed package's "
                              f"({found.origin})")


def _inside_package(origin: str | None) -> bool:
    if origin is None:
        return False
    roots = []
    for name in OWN_PACKAGES:
        spec = importlib.util.find_spec(name)
        roots.extend(spec.submodule_search_locations or [] if spec else [])
    real = os.path.realpath(origin)
    return any(real.startswith(os.path.realpath(r) + os.sep) for r in roots)


def load(explicit: str | Path | None = None, *, allow_external: bool = False,
         env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], SupervisorSpec]:
    """The merged document and the tree it describes, both checked; ConfigError names the
    key path that is wrong."""
    doc = default_document()
    over: dict[str, Any] = {}
    path = find_config(explicit, env)
    if path is not None:
        try:
            check_owner(path)
            over = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except RecursionError:  # (tomllib reads nested arrays and tables by recursion)
            raise ConfigError(f"{path}: values nested too deep to read") from None
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from exc
        doc = merge(doc, over)
    try:
        check_table(doc, Document, "")  # the top level's shape first: parse_tree reads it
        tree = parse_tree(doc)
        check_document(doc, tree, over)
        check_starts(tree, allow_external)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'the default configuration'}: {exc}") from None
    return doc, tree

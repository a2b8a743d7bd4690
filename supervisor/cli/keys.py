"""`moorage keys`: the CurveZMQ keys of remote mode (PROTOCOL.md "Remote").

  keys init                 make the keys directory (0700), the tree's server pair and this
                            user's client pair (0600), unless they exist; print the public keys
  keys allow PUBKEY [--name NAME]
                            let a client key in (a running tree sees it at its next handshake)
  keys revoke NAME|PUBKEY   take a key off the list: every file holding it goes, whatever its
                            mode; a running tree closes its connections
  keys list [--json]        the pairs' public keys and the allow-list

Keys are never read from the working directory: `$MOORAGE_KEYS_DIR`, else
`$XDG_CONFIG_HOME/moorage/keys`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from zmq.utils import z85

from moorage.protocol import curve, endpoints
from moorage.supervisor.cli.common import EXIT_OK, EXIT_USAGE, CliError, keys_dir


def _dir() -> Any:
    return keys_dir()


def cmd_keys_init(args: argparse.Namespace) -> int:
    d = _dir()
    # Each level made 0700 (the config dir above the keys included): a umask of 000 would
    # leave a directory others may write to, and a moorage.toml put there.
    endpoints.make_private_dirs(d)
    os.chmod(d, 0o700)
    (d / curve.ALLOWED).mkdir(exist_ok=True, mode=0o700)
    try:
        made = [name for name in (curve.SERVER, curve.CLIENT) if _make_pair(d, name)]
        server = curve.load_pair(d, curve.SERVER)
        client = curve.load_pair(d, curve.CLIENT)
    except curve.KeyFileError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"keys_dir": str(d), "made": made, "server": server.public.decode(),
                      "client": client.public.decode()}, indent=1))
    return EXIT_OK


def _make_pair(d: Path, name: str) -> bool:
    """The pair `name` in `d`, made unless its secret exists (True when made); its public
    half written from the secret when missing: a run stopped between the two files (a full
    disk) is completed by the next, never left without the public key to hand out."""
    secret = d / f"{name}{curve.SECRET_SUFFIX}"
    public = d / f"{name}{curve.PUBLIC_SUFFIX}"
    if secret.exists():
        if not public.exists():
            pair = curve.read_certificate(secret, secret=True)
            curve.write_certificate(public, curve.KeyPair(pair.public), f"moorage {name}")
        return False
    pair = curve.new_pair()
    curve.write_certificate(secret, pair, f"moorage {name}")
    curve.write_certificate(public, curve.KeyPair(pair.public), f"moorage {name}")
    return True


def default_name(public: bytes) -> str:
    return "key-" + z85.decode(public)[:6].hex()


def cmd_keys_allow(args: argparse.Namespace) -> int:
    try:
        public = curve.decode_public(args.pubkey)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    name = args.name or default_name(public)
    if not curve.NAME_RE.match(name):
        raise CliError(f"--name {name!r}: letters, digits and _.@- only, at most 64")
    d = _dir()
    try:
        curve.check_private_dir(d)
    except curve.KeyFileError as exc:
        raise CliError(str(exc)) from None
    allowed = d / curve.ALLOWED
    allowed.mkdir(exist_ok=True, mode=0o700)
    try:
        keys = curve.read_allowed(d)
    except curve.KeyFileError as exc:
        raise CliError(str(exc)) from None
    if z85.decode(public) in keys:
        print(f"already allowed: {public.decode()}")
        return EXIT_OK
    curve.write_certificate(allowed / f"{name}{curve.PUBLIC_SUFFIX}", curve.KeyPair(public),
                            f"allowed client {name}")
    print(f"allowed {name}: {public.decode()}")
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    d = _dir()
    try:
        # Files open to others too: they allow nothing today, but would after a `chmod 600`.
        entries, unread = curve.read_allowed_files(d, trusted_only=False)
    except curve.KeyFileError as exc:  # (a dir open to others: its list is not trusted)
        raise CliError(str(exc)) from None
    target = args.key
    # The key named, or given: every file that holds it goes (a copy left under another
    # name would keep it allowed).
    revoked = {raw for raw, name in entries if target in (name, z85.encode(raw).decode())}
    gone = [name for raw, name in entries if raw in revoked]
    for name in gone:
        path = d / curve.ALLOWED / f"{name}{curve.PUBLIC_SUFFIX}"
        path.unlink(missing_ok=True)
        print(f"removed {path}")
    for problem in unread:  # (its key unknown: it may be the one revoked)
        print(f"moorage: not compared, could not be read: {problem}", file=sys.stderr)
    if not gone:  # (the caller's: a name, or a key, that is not there, as `not_found`)
        print(f"moorage: no allowed key is named or equal to {target!r}", file=sys.stderr)
        return EXIT_USAGE
    print(f"revoked {', '.join(gone)}")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    d = _dir()
    out: dict[str, Any] = {"keys_dir": str(d)}
    for name in (curve.SERVER, curve.CLIENT):
        try:
            out[name] = curve.load_pair(d, name).public.decode()
        except curve.KeyFileError as exc:
            out[name] = None
            out.setdefault("problems", []).append(str(exc))
    try:
        keys, problems = curve.read_allowed_with_problems(d)
    except curve.KeyFileError as exc:
        raise CliError(str(exc)) from None
    out["allowed"] = {name: z85.encode(raw).decode() for raw, name in sorted(
        keys.items(), key=lambda kv: kv[1])}
    if problems:
        out.setdefault("problems", []).extend(problems)
    if args.json:
        print(json.dumps(out, indent=1))
        return EXIT_OK
    print(f"keys dir  {d}")
    print(f"server    {out[curve.SERVER] or '-'}")
    print(f"client    {out[curve.CLIENT] or '-'}")
    for name, key in out["allowed"].items():
        print(f"allowed   {key}  {name}")
    for p in out.get("problems", []):
        print(f"problem   {p}")
    return EXIT_OK


def add_keys_command(sub: Any, parents: list[Any]) -> None:
    k = sub.add_parser("keys", help="CurveZMQ keys for `up --listen`: init, allow, revoke, "
                       "list", description=__doc__.split("\n\n")[0], parents=parents)
    ks = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    ks.add_parser("init", help="make the server and client key pairs").set_defaults(
        func=cmd_keys_init)
    a = ks.add_parser("allow", help="let a client public key in")
    a.add_argument("pubkey", help="40 Z85 characters (the client's `moorage keys list`)")
    a.add_argument("--name", help="what to call it (default: key-<hex of its start>)")
    a.set_defaults(func=cmd_keys_allow)
    r = ks.add_parser("revoke", help="take a key off the allow-list (by name or key)")
    r.add_argument("key")
    r.set_defaults(func=cmd_keys_revoke)
    ls = ks.add_parser("list", help="the public keys and the allow-list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_keys_list)


def keys_after_options(argv: list[str]) -> list[str]:
    """`keys allow KEY` / `keys revoke KEY` with a key that starts with '-' (the Z85
    alphabet has it): argparse would read it as an option. Such a key goes last, after
    `--`, where only positionals are read."""
    if "keys" not in argv or "--" in argv:
        return argv
    start = argv.index("keys")
    for i in range(start + 1, len(argv)):
        t = argv[i]
        if t.startswith("-") and len(t) == curve.Z85_KEY_LEN and t != "--":
            try:
                curve.decode_public(t)
            except ValueError:
                continue
            return [*argv[:i], *argv[i + 1:], "--", t]
    return argv

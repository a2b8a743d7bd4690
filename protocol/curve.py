"""CurveZMQ keys on disk: the tree's server key pair, this user's client key pair, and the
allow-list of client public keys that a tree accepts over tcp (PROTOCOL.md section 2,
"Remote").

The keys directory is `$MOORAGE_KEYS_DIR`, else `$XDG_CONFIG_HOME/moorage/keys`, else
`~/.config/moorage/keys`; mode 0700, every file in it 0600, all of them the user's:

  server.key, server.key_secret   the pair a tree serves tcp with (its public key goes in
                                  the connection file)
  client.key, client.key_secret   this user's pair, to connect to trees elsewhere
  allowed/<name>.key              one client public key a tree here accepts, per file

Files are ZeroMQ certificates as czmq and pyzmq's zmq.auth write them (and zmq.auth reads
them here), so a key made with either tool can be allowed as it is. A secret key file that
group or others can read, or a directory they can write, is refused: whoever can read the
server's secret can pose as the tree, whoever can write the allow-list can let anyone in.
Writes are atomic (a temporary file, then a rename), so a tree reading the allow-list never
sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth.certs import load_certificate
from zmq.utils import z85

from moorage.protocol.endpoints import home, xdg_dir

KEYS_ENV = "MOORAGE_KEYS_DIR"
SERVER = "server"
CLIENT = "client"
ALLOWED = "allowed"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_LEN = 40  # a 32-byte key in Z85
MAX_CERT_BYTES = 4096  # a certificate is a few hundred bytes; a bigger file is not one
MAX_ALLOWED = 1024  # allow-list entries read; more is refused, not read half
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
# A read that failed for want of something (a descriptor, memory) or on the device, not
# because of what the file is: it says nothing of the file, which may be read a moment later.
READ_FAILURES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EIO})


class KeyFileError(ValueError):
    """A key file or directory that cannot be used: missing, malformed, or open to others.
    The message says which file and what to do about it."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair in Z85 text (40 characters each); `secret` is None for a public key."""

    public: bytes
    secret: bytes | None = None

    @property
    def fingerprint(self) -> str:
        """The first 8 characters of the public key: enough to tell keys apart in a log."""
        return self.public[:8].decode()


def keys_dir(env: Mapping[str, str] | None = None) -> Path:
    """$MOORAGE_KEYS_DIR, else moorage/keys under the XDG config home; ValueError (saying
    what to set) where neither is set and there is no home to find it in."""
    env = os.environ if env is None else env
    if env.get(KEYS_ENV):
        return Path(os.path.abspath(env[KEYS_ENV]))
    base = xdg_dir(env, "XDG_CONFIG_HOME") or str(
        home(env, f"{KEYS_ENV} or XDG_CONFIG_HOME") / ".config")
    return Path(base) / "moorage" / "keys"


def decode_public(text: str | bytes) -> bytes:
    """A Z85 public key as given by a user, checked: ValueError if it is not one."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    if len(raw) != Z85_KEY_LEN:
        raise ValueError(f"a CURVE public key is {Z85_KEY_LEN} Z85 characters, got "
                         f"{len(raw)}: {raw[:60]!r}")
    try:
        if len(z85.decode(raw)) != 32:
            raise ValueError
    except (ValueError, KeyError):  # z85.decode raises KeyError on a character outside Z85
        raise ValueError(f"not a Z85 key: {raw!r}") from None
    return raw


def new_pair() -> KeyPair:
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


# --- modes -------------------------------------------------------------------------------------


def check_private_dir(path: Path) -> None:
    """The directory is the user's and nobody else's (mode 0700 or stricter)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist; run `moorage keys init`") from None
    _check_private(path, st, stat.S_ISDIR(st.st_mode), "directory", 0o700)


def check_private_file(path: Path, st: os.stat_result | None = None) -> None:
    """A file only its owner, this user, can read or write (0600 or stricter)."""
    st = st or path.lstat()
    _check_private(path, st, stat.S_ISREG(st.st_mode), "regular file", 0o600)


def _check_private(path: Path, st: os.stat_result, kind_ok: bool, kind: str,
                   mode: int) -> None:
    """Of the kind expected, the user's own, and open to no one else (`mode` says how to
    make it so)."""
    if not kind_ok:
        raise KeyFileError(f"{path} is not a {kind}")
    _check_owner(path, st)
    if st.st_mode & 0o077:
        raise KeyFileError(f"{path} is open to group or others (mode {st.st_mode & 0o777:o}); "
                           f"`chmod {mode:o} {path}`")


def _check_owner(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.getuid():
        raise KeyFileError(f"{path} belongs to uid {st.st_uid}, not to this user "
                           f"({os.getuid()})")


# --- certificate files -------------------------------------------------------------------------


def write_certificate(path: Path, pair: KeyPair, what: str) -> None:
    """Write `pair` as a ZeroMQ certificate (the secret too when the pair has one), 0600,
    atomically: a reader sees the old file or the new one, never part of one."""
    kind = "**Secret**" if pair.secret else "Public"
    lines = [f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by moorage "
             "****",
             f"#   ZeroMQ CURVE {kind} Certificate: {what}",
             "", "metadata", "curve", f'    public-key = "{pair.public.decode()}"']
    if pair.secret:
        lines.append(f'    secret-key = "{pair.secret.decode()}"')
    data = ("\n".join(lines) + "\n").encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:  # (a nearly full disk takes part of a write before it refuses)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        # A failed write leaves nothing (a later run writes the file whole), and says
        # which file it was: os.write's error names none.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def read_certificate(path: Path, secret: bool) -> KeyPair:
    """The key pair in a certificate file; with `secret`, the file must hold the secret key
    and be private. KeyFileError says what is wrong; OSError when it could not be read
    (READ_FAILURES: nothing is known of it then)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist; run `moorage keys init`") from None
    if secret:
        check_private_file(path, st)
    elif not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_size > MAX_CERT_BYTES:
        raise KeyFileError(f"{path} is {st.st_size} bytes: not a certificate")
    try:
        public, secret_key = load_certificate(path)
        public = decode_public(public)
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in READ_FAILURES:
            raise
        raise KeyFileError(f"{path}: not a CURVE certificate ({exc})") from None
    if secret:
        if secret_key is None or len(secret_key) != Z85_KEY_LEN:
            raise KeyFileError(f"{path} holds no secret key")
        if zmq.curve_public(secret_key) != public:
            raise KeyFileError(f"{path}: its secret key does not match its public key")
        return KeyPair(public, secret_key)
    return KeyPair(public)


def load_pair(directory: Path, name: str) -> KeyPair:
    """The pair `name` (server, client) of a keys directory, its modes checked."""
    check_private_dir(directory)
    return read_certificate(directory / f"{name}{SECRET_SUFFIX}", secret=True)


def read_allowed(directory: Path) -> dict[bytes, str]:
    """The allow-list: raw 32-byte public key -> the name it was allowed under. KeyFileError
    when the list as a whole cannot be trusted (open to others) or is too long; a file that
    is not a certificate is left out (and named in the error list returned by
    `read_allowed_with_problems`)."""
    keys, _ = read_allowed_with_problems(directory)
    return keys


def read_allowed_with_problems(directory: Path) -> tuple[dict[bytes, str], list[str]]:
    entries, problems = read_allowed_files(directory)
    return {raw: name for raw, name in entries}, problems


def read_allowed_files(directory: Path, trusted_only: bool = True
                       ) -> tuple[list[tuple[bytes, str]], list[str]]:
    """Every allowed key with the name of its file, one entry per file (two files may hold
    one key: revoking it takes both), and what could not be read.

    With `trusted_only` False, a file others may write or that is not this user's is read
    too: a key is revoked by removing every file that holds it, and one that is not trusted
    today would be after a `chmod 600`. The directory must be private either way.

    OSError when the list could not be read: the directory (any error but its absence, an
    empty list), or a file for want of a descriptor or memory (READ_FAILURES), which is not
    a file left out: its key may be on the list."""
    allowed = directory / ALLOWED
    try:
        check_private_dir(allowed)
    except KeyFileError:
        if not allowed.exists():
            return [], []
        raise
    out: list[tuple[bytes, str]] = []
    problems: list[str] = []
    with os.scandir(allowed) as it:
        entries = sorted(e.name for e in it if e.name.endswith(PUBLIC_SUFFIX)
                         and not e.name.startswith("."))
    if len(entries) > MAX_ALLOWED:
        raise KeyFileError(f"{allowed} has {len(entries)} keys, over {MAX_ALLOWED}")
    for fname in entries:
        path = allowed / fname
        try:
            st = path.lstat()
            if trusted_only and (st.st_mode & 0o022 or st.st_uid != os.getuid()):
                raise KeyFileError(f"{path} is writable by others or not this user's")
            pair = read_certificate(path, secret=False)
        except (OSError, KeyFileError) as exc:
            if isinstance(exc, OSError) and exc.errno in READ_FAILURES:
                raise
            problems.append(str(exc))
            continue
        out.append((z85.decode(pair.public), fname.removesuffix(PUBLIC_SUFFIX)))
    return out, problems

"""Decoding what actors push to `metrics.in`: accepted whole or refused whole, never trusted.

A push is another process's bytes: every count is range-checked, every histogram bounded in
size (encoded and inflated, so a zlib bomb stops before hdrh allocates) and of our own shape.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moorage.actors.runtime import trust
from moorage.actors.runtime.stats import LOSS_COUNTERS
from moorage.protocol import limits
from moorage.protocol.envelope import TAG, DecodeError, unpackb
from moorage.protocol.histogram import DIGITS, HIGHEST_US, LOWEST_US, decode

CLIENT_PREFIX = "client."  # what a process outside the tree may push as (no loss counters)
MAX_LOSS_COUNTERS = 32  # names in a push header's `loss` (actors.runtime.stats.LOSS_COUNTERS)
MAX_HIST_BYTES = 256 * 1024  # encoded; one of our shape is a few KiB at most
MAX_HIST_PAYLOAD = 256 * 1024  # decompressed: bounds a zlib bomb before hdrh sees it
_EXT_HEADER = struct.Struct(">II")  # cookie, length of the compressed payload
_PAYLOAD_HEADER = struct.Struct(">IIIIQQd")  # cookie, len, offset, digits, lowest, highest, ratio


class BadPush(ValueError):
    """A push that cannot be taken; raised before anything of it is merged."""


@dataclass(slots=True)
class OpSample:
    """One op's share of a push: counts since the sender's last push."""

    op: str
    ok: int
    error: int
    counts: Counter[int]  # HDR highest-equivalent microsecond value -> occurrences
    sum_us: int
    caller: int = 0  # of `error`, the caller's (protocol.errors.Fault)


@dataclass(slots=True)
class Push:
    actor: str
    pid: int
    ep: str
    ops: list[OpSample]
    loss: dict[str, int]  # data-loss counts since the sender's last push, by counter name


def _count(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= limits.MAX_ID:
        raise BadPush(f"{what} must be an integer in [0, 2^53), not {v!r:.40}")
    return v


def _check_shape(encoded: Any) -> None:
    # moorage.protocol.histogram.decode builds a histogram of whatever shape the payload claims and
    # inflates it without a limit; both are bounded here first.
    if not isinstance(encoded, (bytes, str)) or len(encoded) > MAX_HIST_BYTES:
        raise BadPush("hist must be an encoded HDR histogram (str or bytes, bounded)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPush(f"hist is not base64: {exc}") from exc
    head = _EXT_HEADER.size
    if len(raw) < head or _EXT_HEADER.unpack_from(raw)[1] != len(raw) - head:
        raise BadPush("hist: bad length header")
    inflate = zlib.decompressobj()
    try:
        payload = inflate.decompress(raw[head:], MAX_HIST_PAYLOAD)
    except zlib.error as exc:
        raise BadPush(f"hist: {exc}") from exc
    if inflate.unconsumed_tail or len(payload) < _PAYLOAD_HEADER.size:
        raise BadPush("hist: payload too large or too short")
    shape = _PAYLOAD_HEADER.unpack_from(payload)[3:6]
    if shape != (DIGITS, LOWEST_US, HIGHEST_US):
        raise BadPush(f"hist: shape {shape} is not {(DIGITS, LOWEST_US, HIGHEST_US)}")


def fold_histogram(encoded: Any) -> Counter[int]:
    """An encoded histogram as counts of values; equal to `Recorder.add_histogram`'s, at a
    tenth of its cost (the recorded iterator walks every index in Python)."""
    _check_shape(encoded)
    try:
        h = decode(encoded)
    except Exception as exc:  # hdrh raises TypeError, zlib.error and its own classes
        raise BadPush(f"hist undecodable: {type(exc).__name__}: {exc}") from exc
    counts: Counter[int] = Counter()
    raw = h.counts[: h.counts_len]
    for i, n in enumerate(raw):
        if n:
            counts[h.get_highest_equivalent_value(h.get_value_from_index(i))] += n
    return counts


def decode_ops(body: Any) -> list[OpSample]:
    """`{op: {ok, error, caller?, hist}}` (an `OpStats.drain`) -> samples, or BadPush."""
    if type(body) is not dict or len(body) > limits.MAX_OPS_PER_PUSH:
        raise BadPush(f"body must be a map of at most {limits.MAX_OPS_PER_PUSH} ops")
    hist_bytes = sum(len(d.get("hist") or b"") for d in body.values()
                     if type(d) is dict and isinstance(d.get("hist"), (bytes, str)))
    if hist_bytes > limits.MAX_PUSH_HIST_BYTES:
        raise BadPush(f"histograms of {hist_bytes} bytes in one push > "
                      f"{limits.MAX_PUSH_HIST_BYTES}")
    out = []
    for name, d in body.items():
        if type(name) is not str or not 0 < len(name) <= limits.MAX_OP_LEN:
            raise BadPush(f"op name must be a non-empty string: {name!r:.40}")
        if type(d) is not dict:
            raise BadPush(f"{name}: entry must be a map")
        ok, error = _count(d.get("ok"), f"{name}.ok"), _count(d.get("error"), f"{name}.error")
        caller = _count(d.get("caller", 0), f"{name}.caller")
        if caller > error:
            raise BadPush(f"{name}: {caller} caller errors of {error} errors")
        counts = fold_histogram(d.get("hist"))
        total = sum(counts.values())
        if total != ok + error:  # every request, ok or not, records its service time
            raise BadPush(f"{name}: hist holds {total} values for {ok + error} requests")
        out.append(OpSample(name, ok, error, counts, sum(v * n for v, n in counts.items()),
                            caller))
    return out


def decode_push(frames: Sequence[bytes]) -> Push:
    if len(frames) != 3 or frames[0] != TAG:
        raise BadPush(f"expected [TAG, header, body], got {len(frames)} frame(s)")
    try:
        header = unpackb(frames[1], limits.MAX_HEADER_SIZE)
        if type(header) is not dict:
            raise BadPush("header must be a map")
        actor, pid, ep = header.get("actor"), header.get("pid"), header.get("ep")
        if type(actor) is not str or not 0 < len(actor) <= 128:
            raise BadPush(f"header.actor must be a non-empty string: {actor!r:.40}")
        if not actor.startswith(CLIENT_PREFIX) and not trust.verify(actor, header.get("tok")):
            # Only a process of this tree can make the token for an actor's name; anyone
            # else (any client) pushes its own latency as `client.<name>`.
            raise BadPush(f"a push as {actor!r:.40} without the tree's token for it")
        if actor.startswith(CLIENT_PREFIX) and header.get("loss"):
            raise BadPush("a client cannot report the tree's data loss")
        body = unpackb(frames[2], max_values=limits.MAX_BODY_VALUES)
    except DecodeError as exc:
        raise BadPush(exc.error.message) from exc
    if type(ep) is not str or len(ep) > 128:
        raise BadPush("header.ep must be a string")
    return Push(actor, _count(pid, "header.pid"), ep, decode_ops(body),
                decode_loss(header.get("loss")))


def decode_loss(loss: Any) -> dict[str, int]:
    """The optional `loss` map of a push header: {counter name: count}, names bounded."""
    if loss is None:
        return {}
    if type(loss) is not dict or len(loss) > MAX_LOSS_COUNTERS:
        raise BadPush(f"header.loss must be a map of at most {MAX_LOSS_COUNTERS} counters")
    for name, n in loss.items():
        if name not in LOSS_COUNTERS:  # a bounded set of names: the SLO record keeps each
            raise BadPush(f"header.loss: unknown counter {name!r:.40}")
        _count(n, f"header.loss.{name}")
    return dict(loss)



"""Decoding what actors push to `metrics.in`: accepted whole or refused whole, never trusted.

A push is another process's bytes: every count is range-checked, every histogram bounded in
size (encoded and inflated, so a zlib bomb stops before anything is decoded) and of our own
shape, and the counts arrays of one push are bounded in what reading them costs.

The counts arrays are read here, not by hdrh: hdrh's Python walks every bucket through several
calls (about 3 us a bucket), so one push of 256 dense histograms held the loop for seconds. Here
a bucket costs a varint read and a table look-up, and a push's buckets are bounded
(MAX_PUSH_BUCKETS, MAX_PUSH_VARINTS) so that its whole cost, merge included, stays within a few
tens of milliseconds however it is built.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moorage.actors.metrics.counts import read_counts
from moorage.actors.runtime import trust
from moorage.actors.runtime.stats import LOSS_COUNTERS
from moorage.protocol import limits
from moorage.protocol.envelope import TAG, DecodeError, unpackb
from moorage.protocol.histogram import DIGITS, HIGHEST_US, LOWEST_US, new_histogram

CLIENT_PREFIX = "client."  # what a process outside the tree may push as (no loss counters)
MAX_CLIENT_NAME = 100  # after the prefix (PROTOCOL.md section 2)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # (Unicode's Cc: what every client refuses)
MAX_LOSS_COUNTERS = 32  # names in a push header's `loss` (actors.runtime.stats.LOSS_COUNTERS)
MAX_HIST_BYTES = 256 * 1024  # encoded; one of our shape is a few KiB at most
MAX_HIST_PAYLOAD = 256 * 1024  # decompressed: bounds a zlib bomb before it is read
MAX_PUSH_BUCKETS = limits.MAX_PUSH_BUCKETS  # (see there)
# Varints read from those counts arrays: an encoder that writes each run of zero counts as one
# varint (every HdrHistogram library does) needs at most two a non-zero count and one a
# histogram; this bounds the reading of zero counts, which the bucket bound does not.
MAX_PUSH_VARINTS = 2 * MAX_PUSH_BUCKETS + limits.MAX_OPS_PER_PUSH
_EXT_HEADER = struct.Struct(">II")  # cookie, length of the compressed payload
_PAYLOAD_HEADER = struct.Struct(">IIIIQQd")  # cookie, len, offset, digits, lowest, highest, ratio
_COOKIE_BASE_MASK = ~0xF0  # the high nibble of the low byte is the word size
_COMPRESSED_COOKIE = 0x1C849304  # V2, compressed (the base64'd header), as hdrh checks it
_PAYLOAD_COOKIE = 0x1C849303  # V2 encoding (the inflated payload)


def _values_by_index() -> tuple[int, ...]:
    """Each index of our histograms' counts array -> the value its bucket is reported as
    (hdrh's highest equivalent value: what `Recorder.add_histogram` gives for it)."""
    h = new_histogram()
    return tuple(h.get_highest_equivalent_value(h.get_value_from_index(i))
                 for i in range(h.counts_len))


_VALUE_AT = _values_by_index()  # strictly increasing, so no two indices share a value


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


@dataclass(slots=True)
class Budget:
    """What reading the histograms of one push may still cost; refused past it."""

    buckets: int = MAX_PUSH_BUCKETS
    varints: int = MAX_PUSH_VARINTS

    def charge(self, buckets: int, varints: int) -> None:
        self.buckets -= buckets
        self.varints -= varints
        if self.buckets < 0:
            raise BadPush(f"histograms of more than {MAX_PUSH_BUCKETS} non-zero counts "
                          "in one push")
        if self.varints < 0:
            raise BadPush(f"histograms of more than {MAX_PUSH_VARINTS} varints in one push")


def _inflate(encoded: Any) -> bytes:
    """The payload (header and counts) of an encoded histogram of our shape, or BadPush; its
    size is bounded before and while it is inflated."""
    if not isinstance(encoded, (bytes, str)) or len(encoded) > MAX_HIST_BYTES:
        raise BadPush("hist must be an encoded HDR histogram (str or bytes, bounded)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPush(f"hist is not base64: {exc}") from exc
    head = _EXT_HEADER.size
    if len(raw) < head or _EXT_HEADER.unpack_from(raw)[1] != len(raw) - head:
        raise BadPush("hist: bad length header")
    if _EXT_HEADER.unpack_from(raw)[0] & _COOKIE_BASE_MASK != _COMPRESSED_COOKIE:
        raise BadPush("hist: not a compressed V2 HDR histogram")
    inflate = zlib.decompressobj()
    try:
        payload = inflate.decompress(raw[head:], MAX_HIST_PAYLOAD)
    except zlib.error as exc:
        raise BadPush(f"hist: {exc}") from exc
    if inflate.unconsumed_tail or len(payload) < _PAYLOAD_HEADER.size:
        raise BadPush("hist: payload too large or too short")
    cookie, _, _, *shape = _PAYLOAD_HEADER.unpack_from(payload)[:6]
    if cookie & _COOKIE_BASE_MASK != _PAYLOAD_COOKIE:
        raise BadPush("hist: payload is not V2 HDR encoded")
    if tuple(shape) != (DIGITS, LOWEST_US, HIGHEST_US):
        raise BadPush(f"hist: shape {tuple(shape)} is not {(DIGITS, LOWEST_US, HIGHEST_US)}")
    return payload


def _read(encoded: Any, budget: Budget) -> tuple[dict[int, int], int, int]:
    """An encoded histogram's counts (counts.read_counts), their total and their sum of
    microseconds; what reading it cost charged to `budget`."""
    payload = _inflate(encoded)
    try:
        counts, varints, total, total_us = read_counts(payload, _PAYLOAD_HEADER.size,
                                                       _VALUE_AT)
    except ValueError as exc:  # (a malformed counts array)
        raise BadPush(str(exc)) from None
    budget.charge(len(counts), varints)
    return counts, total, total_us


def fold_histogram(encoded: Any, budget: Budget | None = None) -> Counter[int]:
    """An encoded histogram as counts of values, equal to `Recorder.add_histogram`'s; what it
    cost is charged to `budget` (by default, one push's worth for this histogram alone)."""
    return Counter(_read(encoded, budget if budget is not None else Budget())[0])


def decode_ops(body: Any) -> list[OpSample]:
    """`{op: {ok, error, caller?, hist}}` (an `OpStats.drain`) -> samples, or BadPush."""
    if type(body) is not dict or len(body) > limits.MAX_OPS_PER_PUSH:
        raise BadPush(f"body must be a map of at most {limits.MAX_OPS_PER_PUSH} ops")
    hist_bytes = sum(len(d.get("hist") or b"") for d in body.values()
                     if type(d) is dict and isinstance(d.get("hist"), (bytes, str)))
    if hist_bytes > limits.MAX_PUSH_HIST_BYTES:
        raise BadPush(f"histograms of {hist_bytes} bytes in one push > "
                      f"{limits.MAX_PUSH_HIST_BYTES}")
    budget = Budget()
    out = []
    for name, d in body.items():
        # (like a client's name, an op name goes into query answers, the Prometheus text,
        # `moorage metrics` and `moorage top`: on a terminal, a control character is a command)
        if type(name) is not str or not 0 < len(name) <= limits.MAX_OP_LEN \
                or CONTROL.search(name):
            raise BadPush(f"op name must be a non-empty string without a control character: "
                          f"{name!r:.40}")
        if type(d) is not dict:
            raise BadPush(f"{name}: entry must be a map")
        ok, error = _count(d.get("ok"), f"{name}.ok"), _count(d.get("error"), f"{name}.error")
        caller = _count(d.get("caller", 0), f"{name}.caller")
        if caller > error:
            raise BadPush(f"{name}: {caller} caller errors of {error} errors")
        counts, total, total_us = _read(d.get("hist"), budget)
        if total != ok + error:  # every request, ok or not, records its service time
            raise BadPush(f"{name}: hist holds {total} values for {ok + error} requests")
        # (PROTOCOL.md section 2: a time of 0 is recorded as 1. Our recorders never write a
        # 0, but an HdrHistogram library's records it at index 0, whose value is 0.)
        zeros = counts.pop(0, 0)
        if zeros:
            counts[1] = counts.get(1, 0) + zeros
            total_us += zeros
        out.append(OpSample(name, ok, error, Counter(counts), total_us, caller))
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
        if actor.startswith(CLIENT_PREFIX):
            name = actor[len(CLIENT_PREFIX):]
            # (the name goes into query answers, the Prometheus text and `moorage top`)
            if not 0 < len(name) <= MAX_CLIENT_NAME or CONTROL.search(name):
                raise BadPush(f"a client's name must be 1 to {MAX_CLIENT_NAME} characters, "
                              f"none a control character: {name!r:.40}")
            if header.get("loss"):
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



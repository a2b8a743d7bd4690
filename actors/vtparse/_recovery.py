"""The seed's recovery modes (section 5.1) and how the reported mode moves between them.

The seed keeps one `recovery_mode` that is both the policy for the next invalid sequence and
a record of what happened last (a clean parse sets it back to SkipInvalid). We split the two
so that the events never depend on where the stream was cut into chunks:

- the *policy* (`Parser(mode=...)`, or assigning `parser.mode`) decides what an invalid
  sequence does, and whether anything is parsed at all; it stays until changed;
- the *mode* (`parser.mode`) reports, after each `feed`, what the parser did, by the seed's
  rules: see `next_mode`.
"""

from __future__ import annotations

from enum import StrEnum

MAX_BUFFER_SIZE = 64 * 1024
"""Default cap, in bytes, on what a parser holds between chunks: the payload of an OSC or
DCS sequence in progress. Everything else it holds is bounded by construction (32 params,
2 intermediates, 3 bytes of a split UTF-8 character)."""

MAX_HEADER = 64
"""Room beside the payload cap for a held sequence's introducer and header (`ESC ]`, a DCS's
`ESC P 1;2$q`, the ESC of an ST not yet complete): `Parser.buffered_bytes()` counts a sequence
in progress from its ESC as long as that is at most `max_buffer + MAX_HEADER` bytes."""


class RecoveryMode(StrEnum):
    """How the parser treats what it cannot parse.

    SKIP_INVALID     an invalid sequence is consumed up to its final byte and dropped (the DEC
                     machine's "ignore" states); parsing goes on after it. The default.
    BUFFER_PARTIAL   a sequence is cut by the end of a chunk and held (bounded by the buffer
                     cap) until the next chunk completes it. As a policy it behaves as
                     SKIP_INVALID: partial sequences are always held.
    RESET_ON_ERROR   at the first byte that makes a sequence invalid the parser resets to
                     ground and parses that byte again as text (`ESC [ 1 ? h` leaves `?h`).
    RAW_PASSTHROUGH  nothing is parsed: `feed` only advances the offset and returns no events.
    """

    SKIP_INVALID = "skip_invalid"
    BUFFER_PARTIAL = "buffer_partial"
    RESET_ON_ERROR = "reset_on_error"
    RAW_PASSTHROUGH = "raw_passthrough"


# Python 3.11 reads an enum member through a descriptor (0.2 µs a lookup, three in the table
# below, which runs after every feed): the table reads them from here.
_RAW = RecoveryMode.RAW_PASSTHROUGH
_PARTIAL = RecoveryMode.BUFFER_PARTIAL
_RESET = RecoveryMode.RESET_ON_ERROR
_SKIP = RecoveryMode.SKIP_INVALID


def next_mode(policy: RecoveryMode, *, partial: bool, reset: bool) -> RecoveryMode:
    """The mode to report after a feed, as the seed's `parse_with_recovery` sets it.

    `partial`: the chunk ended inside a sequence (or a UTF-8 character) that is now held.
    `reset`: the feed met an invalid sequence and, under RESET_ON_ERROR, reset the parser.

    | policy          | partial | reset | mode            | seed                              |
    |-----------------|---------|-------|-----------------|-----------------------------------|
    | RAW_PASSTHROUGH | -       | -     | RAW_PASSTHROUGH | no parsing at all                 |
    | any other       | yes     | -     | BUFFER_PARTIAL  | Err(Incomplete): buffer the chunk |
    | any other       | no      | yes   | RESET_ON_ERROR  | Err(Invalid) under ResetOnError   |
    | any other       | no      | no    | SKIP_INVALID    | Ok: back to SkipInvalid           |

    An invalid sequence skipped under SKIP_INVALID reports SKIP_INVALID: skipping is what
    that mode does, and the parse of the rest was clean.
    """
    if policy is _RAW:
        return policy
    if partial:
        return _PARTIAL
    if reset:
        return _RESET
    return _SKIP

"""Decoding limits: a hostile frame costs an error reply, never memory or a crash.

The same numbers are set on sockets (`zmq.MAXMSGSIZE`, so libzmq drops an oversized peer
before Python sees a byte) and passed to msgpack, whose own limits otherwise follow the buffer
size. PROTOCOL.md lists them; a client should apply the same to what it receives.
"""

from __future__ import annotations

MAX_MESSAGE_SIZE = 64 * 1024 * 1024  # one frame, attachments included (zmq.MAXMSGSIZE)
MAX_HEADER_SIZE = 4096  # the msgpack header frame
MAX_BODY_SIZE = 16 * 1024 * 1024  # the msgpack body frame; bulk bytes go in raw frames
MAX_ATTACHMENTS = 16
MAX_DEPTH = 32  # nesting of arrays and maps in a body
# Values in a request body (each array and map, and each element of one): what decoding and
# checking a body costs grows with this, not with its bytes (an array of a million empty
# arrays is 1 MiB). Bulk bytes ride as one bin or as attachments, each one value.
MAX_BODY_VALUES = 4096
MAX_OP_LEN = 64
MAX_TOPIC_LEN = 256  # a subscription's topic, in bytes: longer ones close the connection
MAX_SUBSCRIPTIONS = 256  # per connection to a publisher: more are not applied (no welcome)
MAX_ID = 2**53 - 1  # request ids and seqs stay exact in JavaScript
HWM = 100_000  # socket high-water marks, in messages
# A subscription's queue in a client's process (its SUB's RCVHWM), in messages. ZeroMQ counts
# messages, not bytes, and a terminal's run to 125 KiB: a subscriber that stops reading holds
# at most 125 MiB, not HWM's 12 GiB. What comes past it waits in the publisher's queue
# (`pub_hwm`), and past that is dropped: a gap the subscription repairs from the publisher's
# retention (a terminal's 2,000 messages: this queue and its `pub_hwm` of 1,000) or reports
# (PROTOCOL.md section 12).
STREAM_HWM = 1_000
# A metric push (metrics.in) is refused whole past either: a pusher splits what it has.
MAX_OPS_PER_PUSH = 256  # an actor has a few dozen ops; a client's are (actor, op) pairs
MAX_PUSH_HIST_BYTES = 1 << 20  # all histograms of one push, encoded: bounds its cost
# Non-zero counts in all the histograms of one push. A histogram of real latencies has a few
# hundred non-zero buckets (2 significant digits: 128 a doubling), so this takes 256 ops of
# 128 each, or 64 ops of 512, and keeps the worst push to a few tens of milliseconds.
MAX_PUSH_BUCKETS = 32_768

"""ZeroMQ socket-monitor messages, read here rather than with `zmq.utils.monitor`, which
imports `zmq.asyncio` and with it asyncio: 40 ms of every CLI call's start (a tenth of it)
and of any program's that imports the blocking client.

A monitor message is two frames: the event (uint16) and its value (an fd, an errno or an
interval; 32 bits) packed native-endian in six bytes, then the endpoint (ZMQ_EVENT_* in
zmq_socket_monitor(3), the version 1 format that `Socket.get_monitor_socket` asks for).
"""

from __future__ import annotations

import struct
from typing import TypedDict

import zmq

_HEAD = struct.Struct("=hi")  # as pyzmq reads it: the events' numbers all fit, and an fd


class MonitorEvent(TypedDict):
    event: int
    value: int
    endpoint: bytes


def parse(frames: list[bytes]) -> MonitorEvent:
    """One monitor message's frames as its event; ValueError for anything else."""
    if len(frames) != 2 or len(frames[0]) != _HEAD.size:
        raise ValueError(f"not a socket-monitor message: {len(frames)} frames")
    event, value = _HEAD.unpack(frames[0])
    return {"event": event, "value": value, "endpoint": frames[1]}


def recv_event(sock: zmq.Socket, flags: int = 0) -> MonitorEvent:
    """The next event of a monitor socket (zmq.Again with NOBLOCK and nothing there)."""
    return parse(sock.recv_multipart(flags))

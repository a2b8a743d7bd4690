"""A client's options are checked where they are given: a bad value is a ValueError naming
the option, a misspelt one a TypeError, and the options a caller passed are never changed by
the overrides given beside them (both clients)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.client import AsyncClient, Client, ClientOptions
from moorage.protocol.recovery import Backoff

BAD: list[tuple[str, Any]] = [
    ("timeout", 0), ("timeout", -1.0), ("timeout", "5"), ("timeout", math.inf),
    ("timeout", math.nan), ("timeout", True), ("timeout", None),
    ("attempt_timeout", 0.0), ("metrics_interval", 0),
    ("breaker_cooldown", -0.1), ("breaker_threshold", 0), ("breaker_threshold", 2.0),
    ("reconnect_ivl_ms", -1), ("reconnect_ivl_max_ms", 1.5),
    ("stream_hwm", -1), ("stream_hwm", 10.0), ("stream_hwm", "1000"),
    ("backoff", (0.01, 2.0, 0.5)), ("learn_ops", 1), ("idempotent_ops", "fs.read"),
    ("idempotent_ops", {1, 2}), ("metrics_name", ""), ("metrics_name", "a\nb"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_a_bad_option_is_refused_by_name(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"ClientOptions\.{name} must be|metrics_name must be"):
        ClientOptions(**{name: value})


@pytest.mark.parametrize("make", [Client, AsyncClient])
def test_an_override_is_checked_and_leaves_the_callers_options_alone(make, tmp_path: Path
                                                                     ) -> None:
    mine = ClientOptions(timeout=3.0)
    with pytest.raises(ValueError, match=r"ClientOptions\.stream_hwm must be"):
        make(tmp_path, options=mine, stream_hwm=-5)
    with pytest.raises(TypeError, match="timout"):
        make(tmp_path, options=mine, timout=9.0)
    assert (mine.timeout, mine.stream_hwm) == (3.0, ClientOptions().stream_hwm)


def test_the_client_takes_its_overrides_on_a_copy(tmp_path: Path) -> None:
    mine = ClientOptions(timeout=3.0)
    c = Client(tmp_path, options=mine, timeout=7.5, stream_hwm=0,
               idempotent_ops=["fs.read"])
    try:
        assert (c.core.options.timeout, c.core.options.stream_hwm) == (7.5, 0)
        assert c.core.options.idempotent_ops == frozenset({"fs.read"})
        assert mine.timeout == 3.0 and mine.idempotent_ops == frozenset()
    finally:
        c.close()


def test_good_options_pass_as_given() -> None:
    o = ClientOptions(timeout=1, attempt_timeout=0.25, breaker_cooldown=0, breaker_threshold=1,
                      reconnect_ivl_ms=0, reconnect_ivl_max_ms=0, stream_hwm=0,
                      backoff=Backoff(0.01, 2.0, 0.5), learn_ops=False,
                      idempotent_ops={"fs.read"}, metrics_name="editor", metrics_interval=0.01)
    assert o.timeout == 1 and o.idempotent_ops == frozenset({"fs.read"})

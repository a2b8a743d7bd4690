"""Telling an actor a pressure level and quality in a test, as the resource actor does: an
actor takes `sys.pressure` only with the tree's token (actors/runtime/actor.py), which only
a process holding the tree's key can make.

  told(level, quality)   `sys.pressure`'s arguments with this process's token: for an actor
                         forked from the test process (conftest's `spawn_actor` draws the key
                         before it forks, so the actor holds the same one)
  TELLER                 a child for the config of a tree started by `moorage up` (whose key
                         is its own): a FakeActor that tells for the test, `tell(tree, ...)`
"""

from __future__ import annotations

from typing import Any

from moorage.actors.runtime import trust
from moorage.actors.runtime.actor import PRESSURE_TOKEN_NAME

TELLER = """
[[children]]
id = "teller"
start = "tests.fakes:FakeActor"
"""


def told(level: str, quality: int) -> dict[str, Any]:
    """The arguments of `sys.pressure {level, quality}`, with the token of this process's
    key."""
    return {"level": level, "quality": quality, "tok": trust.token(PRESSURE_TOKEN_NAME)}


def tell(tree: Any, actor: str, level: str, quality: int) -> dict[str, Any]:
    """`sys.pressure {level, quality}` told to `actor` of a tree whose config has TELLER;
    returns the actor's answer."""
    return tree.call("teller", "fake.pressure",
                     {"actor": actor, "level": level, "quality": quality})

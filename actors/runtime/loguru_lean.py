"""loguru without asyncio (and so without ssl) until a coroutine sink asks for it.

loguru 0.7 imports asyncio at import time, for one use: finding the running event loop when
a coroutine function is added as a sink, which no process of the tree does. asyncio imports
ssl, which loads libssl and libcrypto and runs OpenSSL's initialisation. Measured here, in one
interpreter: `import loguru` 12.9 MB resident and ~97 ms, of it `import asyncio` 9.6 MB and
~38 ms. Every process of the tree is forked from one that imported loguru, so those pages
are in each of them (and the root's first imports wait for them).

`install()`, run before loguru is first imported, puts in its place a module with the two
functions loguru takes from it, each importing asyncio when called: loguru behaves as
before (a coroutine sink works, and finds its loop as loguru's own would), and a process that
never adds one never imports asyncio. The package imports of `moorage.actors` and
`moorage.supervisor` run it, so any entry point does before its first log line; where loguru
was imported already, it changes nothing.
"""

from __future__ import annotations

import sys
import types
from typing import Any

SHIM = "loguru._asyncio_loop"


def get_task_loop(task: Any) -> Any:
    return task.get_loop()


def get_running_loop() -> Any:
    import asyncio  # (the first coroutine sink's cost, once)

    return asyncio.get_running_loop()


def install() -> bool:
    """Put the lazy module in place if loguru is not imported yet; whether it is in place."""
    if SHIM in sys.modules:
        return getattr(sys.modules[SHIM], "LAZY", False)
    if "loguru" in sys.modules:
        return False
    shim = types.ModuleType(SHIM, "loguru's event-loop helpers, importing asyncio on use")
    shim.get_task_loop = get_task_loop  # type: ignore[attr-defined]
    shim.get_running_loop = get_running_loop  # type: ignore[attr-defined]
    shim.LAZY = True  # type: ignore[attr-defined]
    sys.modules[SHIM] = shim
    return True

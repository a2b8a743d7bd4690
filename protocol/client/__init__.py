"""Python clients: `Client` (blocking) and `AsyncClient` (asyncio), over one shared core."""

from moorage.protocol.client._core import ClientOptions
from moorage.protocol.client._streams import BytesLost, Loss, Reset
from moorage.protocol.client.sync import Client, Subscription

__all__ = ["AsyncClient", "BytesLost", "Client", "ClientOptions", "Loss", "Reset",
           "Subscription"]


def __getattr__(name: str) -> object:
    # AsyncClient brings asyncio (50 ms of a CLI call's start): imported when first named
    if name == "AsyncClient":
        from moorage.protocol.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

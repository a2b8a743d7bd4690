"""Python clients: `Client` (blocking) and `AsyncClient` (asyncio), over one shared core."""

from protocol.client._core import ClientOptions
from protocol.client._streams import Loss, Reset
from protocol.client.aio import AsyncClient
from protocol.client.sync import Client, Subscription

__all__ = ["AsyncClient", "Client", "ClientOptions", "Loss", "Reset", "Subscription"]

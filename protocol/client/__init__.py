"""Python clients: `Client` (blocking) and `AsyncClient` (asyncio), over one shared core."""

from moorage.protocol.client._core import ClientOptions
from moorage.protocol.client._streams import Loss, Reset
from moorage.protocol.client.aio import AsyncClient
from moorage.protocol.client.sync import Client, Subscription

__all__ = ["AsyncClient", "Client", "ClientOptions", "Loss", "Reset", "Subscription"]

"""moorage's wire protocol, and the Python client that speaks it.

Layout:
  errors      the error taxonomy: stable codes with category, severity, retryable, fallback
  recovery    the seed's recovery matrix as data; back-off and the circuit breaker (pure)
  limits      decoding limits (message size, nesting depth, container lengths)
  envelope    frames: encode and decode requests, replies and stream messages (pure)
  endpoints   where an instance's sockets live (the runtime dir)
  client/     `Client` (blocking) and `AsyncClient` (asyncio) over one decision core
  PROTOCOL.md the language-neutral contract; vectors/ the conformance vectors
"""

from moorage.protocol.envelope import TAG
from moorage.protocol.errors import Category, MoorageError, Severity, WireError

__all__ = ["TAG", "Category", "MoorageError", "Severity", "WireError"]

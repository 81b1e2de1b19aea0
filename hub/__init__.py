"""Mirror Hub: a realtime WebSocket session hub where the stream is the record."""

__version__ = "0.1.0"

"""An OpenAI-Realtime-compatible WebSocket server on the local pipeline.

Any Realtime client (the official ``openai`` SDK, beta or GA events) talks to
the local models by pointing its WebSocket URL at this server. See
docs/server.md. Needs the ``server`` extra (starlette, uvicorn, websockets).
"""

from .app import DEFAULT_HOST, DEFAULT_PORT, ServerOptions, create_app, uvicorn_config
from .engines import Engines
from .protocol import Dialect, ProtocolError, SessionConfig
from .session import RealtimeSession, SessionOptions

__all__ = [
    "DEFAULT_HOST", "DEFAULT_PORT", "Dialect", "Engines", "ProtocolError", "RealtimeSession",
    "ServerOptions", "SessionConfig", "SessionOptions", "create_app", "uvicorn_config",
]

"""The sidecar SSE bridge (``pip install 'otel-events[bridge]'``).

Agents post their events over HTTP; browsers and tools follow each thread live as
Server-Sent Events, resumable after a reconnect. The data's way through it:
``routes`` -> ``batch`` (checks each line) -> ``broker`` (numbering, history, state;
``memory`` by default) -> ``sse`` (frames) -> the page in ``static/``.
"""

from otel_events.bridge.app import create_app
from otel_events.bridge.broker import Broker
from otel_events.bridge.command import bridge_command, create_server
from otel_events.bridge.memory import MemoryBroker
from otel_events.bridge.settings import BridgeSettings

__all__ = ["BridgeSettings", "Broker", "MemoryBroker", "bridge_command", "create_app",
           "create_server"]

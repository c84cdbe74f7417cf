"""``Retention``: how much of each thread the bridge keeps for replay, and for how long.

The defaults live here once, because several places apply them: ``BridgeSettings`` and
the ``bridge`` command's options, both brokers, and ``RedisSink``, which appends into
the bridge's Redis itself and so enforces the same limits. Plain data with no
dependency: the core's sink imports it without the bridge's web stack.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULTS", "Retention"]


@dataclass(frozen=True)
class Retention:
    """A thread's replay window and the bounds around it; the defaults are the deployed
    bridge's (bounded in count, age and bytes, so memory is bounded whoever builds one).
    ``None`` means no bound."""

    #: Events kept per thread for replay.
    count: int = 4096
    #: Seconds an event is kept for replay.
    age: float | None = 3600.0
    #: Bytes of event JSON kept per thread for replay (the newest event always stays).
    bytes: int | None = 64 * 1024 * 1024
    #: Bytes of event JSON kept over all threads together: the memory broker's bound
    #: (with Redis, its ``maxmemory`` bounds the total).
    total_bytes: int | None = 512 * 1024 * 1024
    #: Seconds after which a thread with no event and no reader is forgotten.
    idle_expiry: float | None = 3600.0
    #: Most threads held at once; a new thread beyond it is refused.
    max_threads: int = 10_000


#: The defaults, for the keyword defaults of the places that apply them.
DEFAULTS = Retention()

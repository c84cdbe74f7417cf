"""Fixtures for the Redis broker's tests: a real redis-server (see server.py)."""

from tests.redis.server import own_redis, redis_server, scratch_redis

__all__ = ["own_redis", "redis_server", "scratch_redis"]

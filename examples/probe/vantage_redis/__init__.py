"""An example third-party probe type for Vantage: ``redis_ping``."""

from vantage_redis.probe import RedisPingProbe, RedisPingSettings

__all__ = ["RedisPingProbe", "RedisPingSettings"]

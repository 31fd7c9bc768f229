"""Redis connections from a URL: plain `redis://` and `rediss://`, or Sentinel with `redis+sentinel://`.

A Sentinel URL names the sentinels, the monitored master's service name and the database:

    redis+sentinel://[:password@]host1:26379,host2:26379/mymaster/0

Clients then follow failovers: after the master changes, the next command goes to the new master.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"


def connect(url: str, **options) -> Redis:
    """Return a Redis client for a plain or Sentinel URL."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return Redis.from_url(url, **options)
    hosts = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"invalid sentinel address {item!r} in {SENTINEL_SCHEME} URL; expected host:port")
        hosts.append((host, int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path:
        raise ValueError(f"{SENTINEL_SCHEME} URL needs the master's service name: "
                         f"{SENTINEL_SCHEME}://host:26379/SERVICE[/DB]")
    service = path[0]
    database = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    sentinel = Sentinel(hosts, socket_timeout=options.get("socket_timeout", 5))
    return sentinel.master_for(service, db=database, password=password, **options)

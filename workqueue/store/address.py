"""`redis_url`, read once: which Redis deployment it names and how to reach it.

    redis://, rediss://, unix://                     one server (any URL redis-py reads)
    redis+cluster://[user:pass@]host:port[,...]      a Redis Cluster; the hosts are seeds
    rediss+cluster://...                             the same over TLS
    redis+sentinel://[user:pass@]host:port[,...]/<service>[/<db>]
                                                     the master the Sentinels name, across failovers
    rediss+sentinel://...                            the same over TLS (to the master and the Sentinels)
    memory://                                        the embedded store

The user and password are the data nodes' (cluster nodes, or the Sentinel master and replicas).
Sentinels that require a password of their own take `?sentinel_password=` (and
`sentinel_username=`). TLS options for the two new forms: `ssl_ca_certs`, `ssl_certfile`,
`ssl_keyfile`, `ssl_cert_reqs` (none, optional, required) as query parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qsl, unquote

from ..errors import ConfigError


class Topology(StrEnum):
    SERVER = "server"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"
    MEMORY = "memory"


SCHEMES = {
    "redis": Topology.SERVER, "rediss": Topology.SERVER, "unix": Topology.SERVER,
    "redis+cluster": Topology.CLUSTER, "rediss+cluster": Topology.CLUSTER,
    "redis+sentinel": Topology.SENTINEL, "rediss+sentinel": Topology.SENTINEL,
    "memory": Topology.MEMORY,
}
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
EXPECTED = ("expected redis://, rediss:// or unix:// (one server), redis+cluster://host:port[,host:port...] "
            "(Redis Cluster), redis+sentinel://host:port[,host:port...]/service[/db] (Sentinel), or memory://")


@dataclass(frozen=True, slots=True)
class Address:
    topology: Topology
    url: str  # as given (for one server, redis-py reads it itself)
    hosts: tuple[tuple[str, int], ...] = ()  # cluster seeds, or the Sentinels
    username: str | None = None
    password: str | None = None
    tls: bool = False
    service: str = ""  # the Sentinel service name
    db: int = 0
    options: dict[str, str] = field(default_factory=dict)  # TLS and Sentinel query options

    def tls_options(self) -> dict[str, str]:
        return {k: v for k, v in self.options.items() if k in TLS_OPTIONS}


def parse(url: str) -> Address:
    """Read `url`; ConfigError naming redis_url and what was expected."""
    scheme, sep, rest = url.partition("://")
    topology = SCHEMES.get(scheme.lower()) if sep else None
    if topology is None:
        raise ConfigError(f"redis_url: {EXPECTED}")
    if topology in (Topology.SERVER, Topology.MEMORY):
        return Address(topology, url)
    tls = scheme.lower().startswith("rediss")
    where, _, query = rest.partition("?")
    netloc, _, path = where.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(host_port(part, url) for part in hostlist.split(",") if part)
    if not hosts:
        raise ConfigError(f"redis_url: give at least one host:port after {scheme}://")
    options = dict(parse_qsl(query, keep_blank_values=True))
    allowed = TLS_OPTIONS + (SENTINEL_OPTIONS if topology is Topology.SENTINEL else ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"redis_url: unknown option {unknown[0]!r} (known: {', '.join(allowed)})")
    if topology is Topology.CLUSTER:
        if path.strip("/"):
            raise ConfigError("redis_url: a Redis Cluster has only database 0; remove the path after the hosts")
        return Address(topology, url, hosts, username, password, tls, options=options)
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise ConfigError("redis_url: name the Sentinel service after the hosts: "
                          "redis+sentinel://host:port[,host:port...]/<service>[/<db>]")
    if db and not db.isdigit():
        raise ConfigError(f"redis_url: the database after the service name must be a number (got {db!r})")
    return Address(topology, url, hosts, username, password, tls, unquote(service), int(db or 0), options)


def host_port(part: str, url: str) -> tuple[str, int]:
    host, colon, port = part.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ConfigError(f"redis_url: expected host:port for each host (got {part!r})")
    return host.strip("[]"), int(port)  # [::1]:7000 is an IPv6 host

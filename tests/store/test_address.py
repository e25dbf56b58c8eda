"""`redis_url` forms (DESIGN section 10): what each names, and clear errors for the rest."""

from __future__ import annotations

import pytest

from workqueue.config import build
from workqueue.errors import ConfigError
from workqueue.store.address import Topology, parse


@pytest.mark.parametrize(("url", "topology"), [
    ("redis://127.0.0.1:6379/0", Topology.SERVER),
    ("rediss://user:pw@host:6380/2", Topology.SERVER),
    ("unix:///run/redis.sock", Topology.SERVER),
    ("memory://", Topology.MEMORY),
    ("redis+cluster://a:7000", Topology.CLUSTER),
    ("rediss+cluster://a:7000,b:7001", Topology.CLUSTER),
    ("redis+sentinel://a:26379/mymaster", Topology.SENTINEL),
    ("rediss+sentinel://a:26379,b:26380/mymaster/3", Topology.SENTINEL),
])
def test_each_form_names_its_topology(url: str, topology: Topology) -> None:
    assert parse(url).topology is topology


def test_cluster_url_gives_every_seed_and_the_credentials_decoded() -> None:
    a = parse("rediss+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-2:7002?ssl_ca_certs=/etc/ca.pem")
    assert a.hosts == (("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 7002))
    assert (a.username, a.password, a.tls) == ("app", "p@ss", True)
    assert a.tls_options() == {"ssl_ca_certs": "/etc/ca.pem"}


def test_sentinel_url_gives_the_service_the_database_and_the_sentinels_own_password() -> None:
    a = parse("redis+sentinel://:secret@s1:26379,s2:26379/orders/4?sentinel_password=watch")
    assert (a.hosts, a.service, a.db) == ((("s1", 26379), ("s2", 26379)), "orders", 4)
    assert (a.username, a.password, a.options["sentinel_password"]) == (None, "secret", "watch")
    assert parse("redis+sentinel://s1:26379/orders").db == 0


@pytest.mark.parametrize(("url", "words"), [
    ("http://a:1", ["redis_url", "redis+cluster://", "redis+sentinel://"]),
    ("redis+cluster://", ["redis_url", "host:port"]),
    ("redis+cluster://a", ["redis_url", "host:port", "'a'"]),
    ("redis+cluster://a:port", ["redis_url", "'a:port'"]),
    ("redis+cluster://a:70000", ["redis_url", "'a:70000'"]),
    ("redis+cluster://a:7000/1", ["redis_url", "database 0"]),
    ("redis+cluster://a:7000?sentinel_password=x", ["redis_url", "'sentinel_password'"]),
    ("redis+sentinel://a:26379", ["redis_url", "service"]),
    ("redis+sentinel://a:26379/svc/x", ["redis_url", "'x'"]),
    ("redis+sentinel://a:26379/svc?bogus=1", ["redis_url", "'bogus'", "sentinel_password"]),
])
def test_a_bad_url_is_refused_naming_redis_url_and_what_was_expected(url: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        build({"redis_url": url}, source="test")
    for word in words:
        assert word in str(caught.value), caught.value


def test_durability_is_primary_or_replica_and_replica_needs_real_replicas() -> None:
    assert build({}, source="test").durability == "primary"
    assert build({"durability": "replica", "redis_url": "redis+cluster://a:1"}, source="test").durability == "replica"
    with pytest.raises(ConfigError, match="durability: expected 'primary'"):
        build({"durability": "both"}, source="test")
    with pytest.raises(ConfigError, match="durability: 'replica' needs a Redis with replicas"):
        build({"durability": "replica", "redis_url": "memory://"}, source="test")

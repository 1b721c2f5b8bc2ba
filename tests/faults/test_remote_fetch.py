"""`workers.fetch` and the KB-side `ImageLoader`: every refusal happens before a byte is sent to a host that is
not allowed, and slow or huge bodies end at the total deadline / byte cap (asserted by outcome, not by time)."""

from __future__ import annotations

import asyncio

import pytest

from tests.cluster.serving.hostile_app import CountingServer
from workers.fetch import FetchPolicy, FetchRefused, fetch, is_public_address


@pytest.fixture
def server():
    target = CountingServer(b"x" * 1000)
    yield target
    target.close()


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "fe80::1%eth0",
        "0.0.0.0",
        "240.0.0.1",
        "100.64.0.1",
    ],
)
def test_private_and_reserved_addresses_are_not_public(ip):
    assert not is_public_address(ip)


def test_public_addresses_are_public():
    assert is_public_address("93.184.216.34") and is_public_address("2606:2800:220:1::1")


def test_listed_host_resolving_to_loopback_is_refused_before_connecting(server):
    policy = FetchPolicy(allowed_hosts=("localhost", "127.0.0.1"), allow_private=False)
    for url in (f"http://localhost:{server.port}/a", f"http://127.0.0.1:{server.port}/a"):
        with pytest.raises(FetchRefused, match="address not allowed"):
            fetch(url, policy)
    assert server.hits == 0


def test_credentials_and_unlisted_hosts_are_refused(server):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private=True)
    for url in (
        f"http://u:p@127.0.0.1:{server.port}/a",
        f"http://127.1:{server.port}/a",
        "ftp://127.0.0.1/a",
    ):
        with pytest.raises(FetchRefused):
            fetch(url, policy)
    assert server.hits == 0


class RebindingDNS:
    """A resolver whose answer for `host` changes after the first lookup, the DNS-rebinding attack. The system
    resolver cannot be pointed at a test DNS server here, so `socket.getaddrinfo` is swapped for the test."""

    def __init__(self, monkeypatch, host: str, first: str, then: str):
        import socket

        self.real, self.host, self.answers, self.lookups = socket.getaddrinfo, host, [first, then], 0
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host, port, *args, **kwargs):
        if host != self.host:
            return self.real(host, port, *args, **kwargs)
        self.lookups += 1
        return self.real(self.answers[min(self.lookups, 2) - 1], port, *args, **kwargs)


def test_rebinding_dns_cannot_move_a_checked_fetch_to_loopback(server, monkeypatch):
    # Checked: a public address. Asked again (as httpx would to connect): loopback. The fetch must go to the
    # checked address (unreachable offline, so it fails) and never reach the loopback server.
    dns = RebindingDNS(monkeypatch, "img.example", first="93.184.216.34", then="127.0.0.1")
    with pytest.raises(Exception):  # noqa: B017 - unreachable public address: a connect error or the deadline
        fetch(
            f"http://img.example:{server.port}/a",
            FetchPolicy(allowed_hosts=("img.example",), total_s=1.5, allow_private=False),
        )
    assert server.hits == 0 and dns.lookups == 1


def test_the_connection_goes_to_the_address_resolved_once(server, monkeypatch):
    dns = RebindingDNS(monkeypatch, "img.example", first="127.0.0.1", then="10.255.255.1")
    body = fetch(f"http://img.example:{server.port}/a", FetchPolicy(allowed_hosts=("img.example",)))
    assert body == b"x" * 1000 and server.hits == 1 and dns.lookups == 1


def test_redirect_count_and_byte_cap(server):
    hop = f"http://127.0.0.1:{server.port}/redirect?to="
    loop = hop + hop + hop + f"http://127.0.0.1:{server.port}/a"
    with pytest.raises(FetchRefused, match="redirects"):
        fetch(loop, FetchPolicy(max_redirects=1))
    assert server.hits == 2
    with pytest.raises(FetchRefused, match="max_image_bytes"):
        fetch(f"http://127.0.0.1:{server.port}/a", FetchPolicy(max_bytes=100))
    assert len(fetch(f"http://127.0.0.1:{server.port}/a", FetchPolicy())) == 1000


def test_a_trickling_body_ends_at_the_total_deadline():
    slow = CountingServer(b"y" * 100, slow_s=0.3)  # 30 s of body; each read is quick, so only a total ends it
    try:
        with pytest.raises(FetchRefused, match="total fetch time"):
            fetch(f"http://127.0.0.1:{slow.port}/a", FetchPolicy(total_s=1.0))
    finally:
        slow.close()


def test_kb_side_loader_keeps_s3_under_configured_prefixes_and_bounds_http(tmp_path):
    from kb_builder.config import KBConfig, StorageConfig
    from workers.config import EncoderConfig
    from workers.images import ImageLoader

    slow = CountingServer(b"z" * 100, slow_s=0.3)
    try:
        loader = ImageLoader(EncoderConfig(image_timeout_s=1.0), StorageConfig(root=str(tmp_path)), [])
        image, error = loader.load("s3://not-configured-bucket/a.png")
        assert image is None and "configured buckets" in error
        image, error = loader.load(f"http://127.0.0.1:{slow.port}/a.png")
        assert image is None and "total fetch time" in error
        s3_loader = ImageLoader.for_kb(
            EncoderConfig(),
            StorageConfig(root=str(tmp_path)),
            KBConfig(entity_inputs=["s3://kb-bucket/in/e.jsonl"]),
        )
        assert s3_loader.allowed_s3_prefixes == ["s3://kb-bucket/"]
    finally:
        slow.close()


def test_fetch_slots_exhausted_is_a_503_naming_the_field(tmp_path):
    from cluster.config import ServeConfig
    from cluster.serve.client_images import ClientImages
    from cluster.serve.http import ApiError
    from kb_builder.config import StorageConfig
    from workers.config import EncoderConfig
    from workers.images import ImageLoader

    loader = ImageLoader(EncoderConfig(), StorageConfig(root=str(tmp_path)), [])
    images = ClientImages(ServeConfig(fetch_remote_images=True, max_concurrent_fetches=0), loader, ApiError)
    with pytest.raises(ApiError) as refused:
        asyncio.run(images.decode("http://example.com/a.png", "image"))
    assert refused.value.status == 503 and refused.value.field == "image"

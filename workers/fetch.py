"""Bounded HTTP(S) fetches of image URLs: the one place the system GETs a URL it did not choose itself.

Two callers: the KB side (`ImageLoader`, URLs from the operator's own KB) and serving (a client's `image`, only
when `serve.fetch_remote_images` is on). Both get a TOTAL deadline per fetch (not per read: a server trickling a
byte a second cannot hold a fetch past `total_s`), a byte cap checked while streaming (Content-Length may lie),
and a bound on redirects, each hop followed by hand so each is checked again. A `FetchPolicy` with
`allowed_hosts` set (serving) also refuses every host not listed, credentials in URLs, and any host that resolves
to a private, loopback, link-local, multicast or reserved address (`127.1`, `0x7f000001`, `[::ffff:127.0.0.1]`
all resolve to loopback). Such a host is resolved ONCE per hop: the connection goes to the address that was
checked (`PinnedBackend`; TLS still verifies the certificate for the host name), so a DNS server that answers
differently the second time (rebinding) cannot move the fetch to another address.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit


class FetchRefused(ValueError):
    """The URL may not be fetched (scheme, host, address, redirect count, size or time)."""


@dataclass(frozen=True)
class FetchPolicy:
    total_s: float = 10.0  # the whole fetch, every redirect hop and every read included
    max_bytes: int = 20_000_000
    max_redirects: int = 3
    allowed_hosts: tuple[str, ...] | None = (
        None  # None: any host (KB side); else exact, case-insensitive names
    )
    allow_private: bool = (
        True  # False: refuse hosts resolving to private/loopback/link-local/reserved addresses
    )
    schemes: tuple[str, ...] = field(default=("http", "https"))


def is_public_address(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not (  # is_global also excludes shared space (100.64/10, carrier NAT)
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
    )


def check_url(url: str, policy: FetchPolicy) -> str | None:
    """Raise `FetchRefused` unless `policy` lets this one hop be fetched. With an allow-list, the host is
    resolved here and the address to connect to is returned (None: connect by name, the KB side)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in policy.schemes:
        raise FetchRefused("scheme not allowed")
    host = (parts.hostname or "").lower()
    if not host:
        raise FetchRefused("no host")
    if policy.allowed_hosts is None:
        return None
    if parts.username is not None or parts.password is not None:
        raise FetchRefused("credentials in URL")
    if host not in {h.lower() for h in policy.allowed_hosts}:
        raise FetchRefused("host not allowed")
    try:
        infos = socket.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise FetchRefused("host does not resolve") from None
    if not infos:
        raise FetchRefused("host does not resolve")
    if not policy.allow_private and not all(is_public_address(info[4][0]) for info in infos):
        raise FetchRefused("address not allowed")
    return infos[0][4][0]


class PinnedBackend:
    """httpcore network backend that connects a host only to the address `check_url` approved for it."""

    def __init__(self):
        import httpcore

        self.inner = httpcore.SyncBackend()
        self.pins: dict[str, str] = {}

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        address = self.pins.get(host.lower())
        if address is None:  # never reached: every hop is checked (and pinned) before it is requested
            raise FetchRefused("address not checked")
        return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, *args, **kwargs):
        raise FetchRefused("unix sockets not allowed")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def pinned_client(backend: PinnedBackend):
    """An httpx client whose connections go through `backend`. httpx has no public hook for the backend, so the
    transport's own pool gets it (one SSL context, the transport's, not a second one per fetch)."""
    import httpx

    transport = httpx.HTTPTransport()
    transport._pool._network_backend = backend
    return httpx.Client(transport=transport, follow_redirects=False)


def fetch(url: str, policy: FetchPolicy, client=None) -> bytes:
    """GET `url` under `policy`; raises `FetchRefused` or an httpx/OS error. Blocking: call it off the loop."""
    import httpx

    deadline = time.monotonic() + policy.total_s
    backend = PinnedBackend() if policy.allowed_hosts is not None else None
    own = client is None or backend is not None
    client = pinned_client(backend) if backend else client or httpx.Client(follow_redirects=False)
    try:
        for _ in range(policy.max_redirects + 1):
            address = check_url(url, policy)
            if backend is not None:
                backend.pins[(urlsplit(url).hostname or "").lower()] = address
            with client.stream("GET", url, timeout=_left(deadline), follow_redirects=False) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise OSError(f"HTTP {resp.status_code}")
                if int(resp.headers.get("content-length") or 0) > policy.max_bytes:
                    raise FetchRefused(f"image is over max_image_bytes={policy.max_bytes}")
                chunks, total = [], 0
                for chunk in resp.iter_bytes():  # decoded bytes: a gzip bomb counts at full size
                    total += len(chunk)
                    if total > policy.max_bytes:  # a server may lie about content-length or send none
                        raise FetchRefused(f"image is over max_image_bytes={policy.max_bytes}")
                    _left(deadline)
                    chunks.append(chunk)
                return b"".join(chunks)
        raise FetchRefused(f"more than {policy.max_redirects} redirects")
    finally:
        if own:
            client.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchRefused("total fetch time exceeded")
    return left

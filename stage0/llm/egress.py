"""The egress policy: an httpx transport that calls only what a provider row allows.

For each request: the URL's host must be one the row lists; the host is resolved once, and an
address that is not globally routable (private, loopback, link-local, CGNAT, unique-local
fd00::/8, unspecified, multicast, reserved) is used only when the row names that exact address;
cloud metadata addresses never. The connection goes to the address that was checked (the URL's
host is swapped for it, while the Host header and TLS SNI/certificate check keep the name), so
a second DNS answer cannot redirect it (no DNS rebinding). Plain http only to an address the row
names explicitly (a local model server); anything public is https with verified TLS.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from functools import lru_cache

import httpx

from stage0.errors import LoglineError
from stage0.llm.providers import Provider

Resolver = Callable[[str, int], list[str]]

#: Instance metadata services: never reachable, whatever a row says.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an address literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise LoglineError("PROVIDER_UNAVAILABLE", f"cannot resolve {host}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CachedResolver:
    """A resolver that keeps each (host, port)'s answer for `ttl_s` seconds (10): a call
    does not wait for DNS each time. Only the lookup is kept: every address is still judged
    for each request (verdict()), the connection still goes to the address judged, and a
    failure is never kept (the next call asks again)."""

    def __init__(self, resolver: Resolver = resolve, ttl_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, size: int = 256) -> None:
        self.resolver, self.ttl_s, self.clock, self.size = resolver, ttl_s, clock, size
        self._answers: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        key, now = (host.lower(), port), self.clock()
        with self._lock:
            held = self._answers.get(key)
        if held is not None and now < held[0]:
            return list(held[1])
        found = self.resolver(host, port)
        with self._lock:
            if len(self._answers) >= self.size:
                self._answers.clear()
            self._answers[key] = (now + self.ttl_s, list(found))
        return found


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=256)
def _named(addresses: tuple[str, ...]) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return frozenset(_address(a) for a in addresses)


def _explicit(provider: Provider) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the row names (parsed once per list of them)."""
    return _named(provider.egress.addresses)


def verdict(provider: Provider, text: str) -> str | None:
    """Why connecting to address `text` is refused for `provider`, or None when it is allowed."""
    ip = _address(text)
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    if ip in _explicit(provider):
        return None
    if not ip.is_global or ip.is_multicast:
        return (f"{ip} is not a public address (private, loopback, link-local or reserved); "
                "list it in egress.addresses to allow it")
    return None


def check_host(provider: Provider, host: str) -> None:
    if host.lower().strip("[]") not in provider.allowed_hosts:
        raise LoglineError("EGRESS_DENIED", f"host {host!r} is not in the provider's "
                           f"egress.hosts", provider.name)


def pick_address(provider: Provider, scheme: str, host: str, port: int,
                 resolver: Resolver) -> str:
    """The checked address to connect to for host:port, or EGRESS_DENIED."""
    check_host(provider, host)
    reasons = []
    for text in resolver(host.strip("[]"), port):
        why = verdict(provider, text)
        if why is None and scheme != "https" and _address(text) not in _explicit(provider):
            why = f"plain http to {text}: only https, unless egress.addresses names it"
        if why is None:
            return text
        reasons.append(why)
    raise LoglineError("EGRESS_DENIED", "; ".join(reasons) or f"{host} resolves to nothing",
                       provider.name)


class EgressTransport(httpx.BaseTransport):
    """Checks and pins every request's address, then hands it to httpx's own transport."""

    def __init__(self, provider: Provider, resolver: Resolver = resolve,
                 verify: bool | ssl.SSLContext = True) -> None:
        self.provider = provider
        self.resolver = resolver
        self._inner = httpx.HTTPTransport(verify=verify, retries=0, http2=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        address = pick_address(self.provider, url.scheme, url.host, port, self.resolver)
        request.extensions = {**request.extensions, "sni_hostname": url.host}
        request.url = url.copy_with(host=address)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()

"""Webhook URL checks: where FlickrHub may send a POST (pure checks plus one async resolve).

A callback URL must be http or https, and every address its host resolves to
must be public: loopback, private (RFC 1918, fc00::/7), link-local, CGNAT,
multicast, unspecified, reserved and cloud-metadata addresses are refused unless
the host name or a CIDR holding the address is allow-listed
(`WEBHOOK_ALLOWED_HOSTS`). The gateway checks at submission; the worker checks
again at delivery and then connects to exactly the addresses it checked
(`PinnedResolver`), so a second DNS answer cannot swap in a private address
between the check and the connection (DNS rebinding).

`WEBHOOK_HOST_OVERRIDES` gives static answers for names (like /etc/hosts, for
split-horizon setups and for tests); overridden answers are checked like any other.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from common.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = frozenset({"http", "https"})
# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack IPv4, AWS IPv6): named so refusals say why.
METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# Ranges no webhook may reach unless allow-listed, with the reason a refusal gives.
BLOCKED: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    )
)
_RESOLVE_TIMEOUT_S = 2.0


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why (safe to show the client)."""


class UrlUnresolved(UrlRefused):
    """The URL's host did not resolve (or not in time)."""


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:  # ::ffff:127.0.0.1 reaches 127.0.0.1
            return blocked_reason(mapped)
    if address in METADATA:
        return "cloud metadata"
    for network, reason in BLOCKED:
        if address.version == network.version and address in network:
            return reason
    return None


def parse_allow_list(raw: str) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    """WEBHOOK_ALLOWED_HOSTS (`name,10.0.0.0/8,127.0.0.1`) → host names and networks."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            if "/" in item or not _is_hostname(item):
                raise ValueError(f"{item!r} is neither a host name nor an IP address or CIDR") from None
            names.add(item.lower().rstrip("."))
    return frozenset(names), tuple(networks)


def parse_overrides(raw: str) -> dict[str, tuple[IPAddress, ...]]:
    """WEBHOOK_HOST_OVERRIDES (`name=ip|ip,other=ip`) → static answers per host name."""
    out: dict[str, tuple[IPAddress, ...]] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, addresses = item.partition("=")
        if not sep or not _is_hostname(name.strip()):
            raise ValueError(f"{item!r}: expected name=ip[|ip…]")
        try:
            out[name.strip().lower().rstrip(".")] = tuple(
                ipaddress.ip_address(a.strip()) for a in addresses.split("|")
            )
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
    return out


def _is_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()
        for label in labels
    )


def split_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; UrlRefused for any other shape."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise UrlRefused("only http and https URLs may receive webhooks")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("credentials in the URL are not allowed (sign with callback_secret instead)")
    return host, port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class UrlGuard:
    """Decides whether a webhook URL may be called; `resolve()` returns the addresses to connect to."""

    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    overrides: Mapping[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    timeout_s: float = _RESOLVE_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlGuard:
        """The guard WEBHOOK_ALLOWED_HOSTS, WEBHOOK_HOST_OVERRIDES and WEBHOOK_RESOLVE_TIMEOUT_S describe."""
        return cls.from_config(
            settings.webhook_allowed_hosts,
            settings.webhook_host_overrides,
            settings.webhook_resolve_timeout_s,
        )

    @classmethod
    def from_config(
        cls, allowed: str, overrides: str = "", timeout_s: float = _RESOLVE_TIMEOUT_S
    ) -> UrlGuard:
        """A guard from the WEBHOOK_ALLOWED_HOSTS / WEBHOOK_HOST_OVERRIDES strings."""
        names, networks = parse_allow_list(allowed)
        return cls(names, networks, parse_overrides(overrides), timeout_s)

    def host_allowed(self, host: str) -> bool:
        """True when the host name itself is allow-listed (any address it resolves to is fine)."""
        return host.lower() in self.allowed_names

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why a connection to `address` is refused, or None when it is allowed."""
        if any(address.version == n.version and address in n for n in self.allowed_networks):
            return None
        return blocked_reason(address)

    def check_addresses(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """UrlRefused unless every address may be reached (one bad answer refuses the host)."""
        if self.host_allowed(host):
            return
        for address in addresses:
            reason = self.address_refusal(address)
            if reason is not None:
                shown = host if host == str(address) else f"{host} ({address})"
                raise UrlRefused(f"{shown} is a {reason} address; webhooks go to public addresses only")

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of `host` after the checks (an IP literal is its own answer)."""
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        elif host.lower() in self.overrides:
            found = list(self.overrides[host.lower()])
        else:
            found = await self._lookup(host, port)
        self.check_addresses(host, found)
        return found

    async def check_url(self, url: str) -> list[IPAddress]:
        """Parse, resolve and check a webhook URL; its checked addresses."""
        host, port = split_url(url)
        return await self.resolve(host, port)

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=self.timeout_s
            )
        except TimeoutError:
            raise UrlUnresolved(f"{host} did not resolve within {self.timeout_s:g}s") from None
        except (OSError, UnicodeError) as exc:
            raise UrlUnresolved(f"{host} does not resolve ({type(exc).__name__})") from None
        found: list[IPAddress] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
            if address not in found:
                found.append(address)
        if not found:
            raise UrlUnresolved(f"{host} has no addresses")
        return found


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


# The checked answer for the delivery in progress: host → addresses (set by `pinned()`).
_PINNED: contextvars.ContextVar[tuple[str, tuple[IPAddress, ...]] | None] = contextvars.ContextVar(
    "flickrhub_pinned_addresses", default=None
)


def pin(host: str, addresses: Sequence[IPAddress]) -> contextvars.Token[Any]:
    """Make `PinnedResolver` answer `host` with `addresses` in this context (reset with the token)."""
    return _PINNED.set((host.lower(), tuple(addresses)))


def unpin(token: contextvars.Token[Any]) -> None:
    """Undo `pin`."""
    _PINNED.reset(token)


class PinnedResolver(AbstractResolver):
    """aiohttp resolver that answers with the addresses the guard checked, never with a fresh lookup.

    A host pinned in the current context gets exactly its checked addresses; any
    other host (there should be none: redirects are off) is resolved and checked here.
    """

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The pinned (or freshly checked) addresses of `host` as aiohttp connection targets."""
        pinned = _PINNED.get()
        if pinned is not None and pinned[0] == host.lower():
            addresses: Sequence[IPAddress] = pinned[1]
        else:
            try:
                addresses = await self._guard.resolve(host, port)
            except UrlRefused as exc:
                raise OSError(str(exc)) from exc
        return [
            ResolveResult(
                hostname=host,
                host=str(a),
                port=port,
                family=socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        """Nothing to release."""

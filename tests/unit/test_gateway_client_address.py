"""Authenticator.client_address: the remembered answers are client_ip's, per peer and forwarded chain."""

from __future__ import annotations

import ipaddress
from typing import Any

from gateway.authn import Authenticator, client_ip

PROXY = ipaddress.ip_network("10.0.0.0/8")


def _authenticator(**kw: Any) -> Authenticator:
    none: Any = None  # no store or Redis: client_address needs neither
    return Authenticator(
        none, none, cache_s=1.0, skew_s=300, trusted_proxies=[PROXY], bcrypt_concurrency=1, **kw
    )


def test_remembered_addresses_answer_as_client_ip_does_for_each_forwarded_chain() -> None:
    auth = _authenticator()
    cases = [
        ("ipv4:203.0.113.9:5000", ""),
        ("ipv4:10.1.2.3:6000", "198.51.100.7"),
        ("ipv4:10.1.2.3:6000", "198.51.100.7, 10.9.9.9"),
        ("ipv4:10.1.2.3:6000", "192.0.2.1"),  # same proxy connection, another client behind it
        ("ipv6:[2001:db8::1]:7000", "198.51.100.7"),  # not a trusted proxy: its header proves nothing
    ]
    for _ in range(2):  # the second pass answers from memory
        for peer, forwarded in cases:
            md = {"x-forwarded-for": forwarded} if forwarded else {}
            assert auth.client_address(peer, md) == client_ip(peer, forwarded, [PROXY])


def test_the_memory_is_bounded() -> None:
    auth = _authenticator(addresses_max=3)
    for port in range(10):
        assert auth.client_address(f"ipv4:203.0.113.9:{port}", {}) == ("203.0.113.9", False)
    assert len(auth._addresses) <= 3

"""Webhook URL checks: refused ranges, allow-list, resolution and the pinned resolver (no network)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from common import urlguard
from common.settings import Settings, SettingsError

GUARD = urlguard.UrlGuard()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "224.0.0.1",
        "0.0.0.0",
        "::1",
        "::",
        "fc00::1",
        "fd00:ec2::254",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert urlguard.blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "100.128.0.1"])
def test_public_addresses_pass(address: str) -> None:
    assert urlguard.blocked_reason(ipaddress.ip_address(address)) is None


def test_metadata_addresses_say_so() -> None:
    assert urlguard.blocked_reason(ipaddress.ip_address("169.254.169.254")) == "cloud metadata"
    assert urlguard.blocked_reason(ipaddress.ip_address("fd00:ec2::254")) == "cloud metadata"


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x", "http://", "http://u:p@example.com/"]
)
def test_only_plain_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(urlguard.UrlRefused):
        urlguard.split_url(url)


async def test_ip_literals_in_refused_ranges_are_refused_at_check() -> None:
    for url in (
        "http://127.0.0.1:8080/h",
        "http://10.0.0.5/h",
        "http://169.254.169.254/latest",
        "http://[::1]/h",
    ):
        with pytest.raises(urlguard.UrlRefused):
            await GUARD.check_url(url)
    assert await GUARD.check_url("https://93.184.216.34/hook") == [ipaddress.ip_address("93.184.216.34")]


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    # `localhost` resolves through the real resolver (/etc/hosts) to loopback.
    with pytest.raises(urlguard.UrlRefused, match="loopback"):
        await GUARD.check_url("http://localhost:9/hook")


async def test_one_private_answer_among_public_ones_refuses_the_host() -> None:
    guard = urlguard.UrlGuard.from_config("", "mixed.test=93.184.216.34|10.0.0.7")
    with pytest.raises(urlguard.UrlRefused, match="private"):
        await guard.check_url("https://mixed.test/hook")


async def test_allow_list_admits_hosts_and_cidrs() -> None:
    guard = urlguard.UrlGuard.from_config("127.0.0.1,10.1.0.0/16,hooks.internal", "hooks.internal=10.9.9.9")
    assert await guard.check_url("http://127.0.0.1:1/h")
    assert await guard.check_url("http://10.1.200.3/h")
    assert await guard.check_url("http://hooks.internal/h")
    with pytest.raises(urlguard.UrlRefused):
        await guard.check_url("http://10.2.0.1/h")
    with pytest.raises(urlguard.UrlRefused):
        await guard.check_url("http://169.254.169.254/h")


async def test_unresolvable_names_are_refused_as_unresolved() -> None:
    with pytest.raises(urlguard.UrlUnresolved):
        await urlguard.UrlGuard(timeout_s=2.0).check_url("http://no-such-host.invalid/h")


async def test_pinned_resolver_answers_with_the_checked_addresses_only() -> None:
    # Rebinding: the name was checked (public answer) and pinned; a later, different DNS answer
    # (the guard's overrides stand in for it) is never consulted for the pinned host.
    rebound = urlguard.UrlGuard.from_config("", "rebind.test=127.0.0.1")
    resolver = urlguard.PinnedResolver(rebound)
    token = urlguard.pin("rebind.test", [ipaddress.ip_address("93.184.216.34")])
    try:
        answers = await resolver.resolve("rebind.test", 443, socket.AF_INET)
    finally:
        urlguard.unpin(token)
    assert [a["host"] for a in answers] == ["93.184.216.34"]
    # Unpinned, the resolver checks the fresh answer itself and refuses it.
    with pytest.raises(OSError, match="loopback"):
        await resolver.resolve("rebind.test", 443, socket.AF_INET)


def test_bad_configuration_fails_at_start_with_the_variable_name() -> None:
    with pytest.raises(SettingsError, match="WEBHOOK_ALLOWED_HOSTS"):
        Settings.from_env({"WEBHOOK_ALLOWED_HOSTS": "10.0.0.0/33"})
    with pytest.raises(SettingsError, match="WEBHOOK_HOST_OVERRIDES"):
        Settings.from_env({"WEBHOOK_HOST_OVERRIDES": "name=not-an-ip"})
    with pytest.raises(SettingsError, match="CORS_ALLOWED_ORIGINS"):
        Settings.from_env({"CORS_ALLOWED_ORIGINS": "*"})

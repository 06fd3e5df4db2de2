"""Flickr: the app's credentials, its endpoints (or the sandbox's) and user authorization (OAuth)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

SANDBOX_DEMO_CONSUMER_KEY = "demo-consumer-key"
SANDBOX_DEMO_CONSUMER_SECRET = "demo-consumer-secret"
# Flickr's OAuth endpoints (docs/flickr-api.md §1.1); the sandbox serves the same paths.
FLICKR_OAUTH_BASE = "https://www.flickr.com/services/oauth"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class FlickrEndpoints:
    """Where Flickr calls go and the app credentials that sign them."""

    rest: str
    upload: str
    replace: str
    consumer_key: str
    consumer_secret: str = field(repr=False)
    request_token: str = ""  # OAuth: where a request token is fetched
    authorize: str = ""  # OAuth: where the user's browser approves it
    access_token: str = ""  # OAuth: where the approved request token becomes an access token


@dataclass(frozen=True)
class FlickrSettings:
    """The Flickr app FlickrHub calls as, and how its users authorize it."""

    flickr_api_key: str = setting(
        "FLICKR_API_KEY", "", "Flickr app consumer key; empty selects the local sandbox."
    )
    flickr_api_secret: str = setting("FLICKR_API_SECRET", "", "Flickr app consumer secret.", secret=True)
    sandbox_url: str = setting(
        "SANDBOX_URL", "http://127.0.0.1:8765", "Base URL of the Flickr sandbox (no-credentials mode)."
    )
    flickr_rest_url: str = setting(
        "FLICKR_REST_URL", "https://api.flickr.com/services/rest/", "Flickr REST endpoint."
    )
    flickr_upload_url: str = setting(
        "FLICKR_UPLOAD_URL", "https://up.flickr.com/services/upload/", "Flickr upload endpoint."
    )
    flickr_replace_url: str = setting(
        "FLICKR_REPLACE_URL", "https://up.flickr.com/services/replace/", "Flickr replace endpoint."
    )
    flickr_timeout_s: float = setting("FLICKR_TIMEOUT_S", 30.0, "Timeout of one Flickr HTTP call.")
    flickr_oauth_callback_url: str = setting(
        "FLICKR_OAUTH_CALLBACK_URL",
        "",
        "Empty: OAuth out-of-band mode (the user pastes Flickr's verifier). Else callback mode: the "
        "edge's `/v1/auth/callback` URL Flickr redirects to (https; http://127.0.0.1… in demo).",
    )
    auth_request_ttl_s: int = setting(
        "AUTH_REQUEST_TTL_S",
        900,
        "Seconds a started OAuth authorization may wait for its completion.",
        at_least=1,
    )

    @property
    def uses_sandbox(self) -> bool:
        """True when no Flickr credentials are set: calls go to the local sandbox."""
        return not self.flickr_api_key

    @property
    def flickr_endpoints(self) -> FlickrEndpoints:
        """Flickr's real endpoints, or the sandbox's when no credentials are configured."""
        if self.uses_sandbox:
            base = self.sandbox_url.rstrip("/")
            return FlickrEndpoints(
                rest=f"{base}/services/rest/",
                upload=f"{base}/services/upload/",
                replace=f"{base}/services/replace/",
                consumer_key=SANDBOX_DEMO_CONSUMER_KEY,
                consumer_secret=SANDBOX_DEMO_CONSUMER_SECRET,
                request_token=f"{base}/services/oauth/request_token",
                authorize=f"{base}/services/oauth/authorize",
                access_token=f"{base}/services/oauth/access_token",
            )
        return FlickrEndpoints(
            rest=self.flickr_rest_url,
            upload=self.flickr_upload_url,
            replace=self.flickr_replace_url,
            consumer_key=self.flickr_api_key,
            consumer_secret=self.flickr_api_secret,
            request_token=f"{FLICKR_OAUTH_BASE}/request_token",
            authorize=f"{FLICKR_OAUTH_BASE}/authorize",
            access_token=f"{FLICKR_OAUTH_BASE}/access_token",
        )


def check_flickr(s: Settings) -> None:
    """Both app credentials or neither; a callback URL Flickr may redirect a browser to."""
    if bool(s.flickr_api_key) != bool(s.flickr_api_secret):
        raise SettingsError("FLICKR_API_KEY and FLICKR_API_SECRET: set both or neither")
    _check_callback_url(s.flickr_oauth_callback_url, s.environment)


def _check_callback_url(url: str, environment: str) -> None:
    """FLICKR_OAUTH_CALLBACK_URL: empty (oob), https, or a loopback http URL in demo mode."""
    if not url:
        return
    parts = urlsplit(url)
    loopback_http = parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS and environment == "demo"
    if not parts.hostname or (parts.scheme != "https" and not loopback_http):
        raise SettingsError(
            "FLICKR_OAUTH_CALLBACK_URL: expected an https URL (or http://127.0.0.1… in demo mode), "
            f"got {url!r}"
        )

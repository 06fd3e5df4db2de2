"""Typed settings for every FlickrHub process: the only package that reads the environment.

One frozen `Settings` holds every field; each area module (process, stores, flickr,
vault, gateway, mover, worker, cache, edge, auth, jobs) declares its fields, with
their environment variable, default, description and bounds, and the checks that
concern it. The README's configuration table is generated from these definitions
(`python -m common.settings --markdown`). A bad value fails at start with the
variable's name in the message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.settings.auth import BCRYPT_MAX_ROUNDS, BCRYPT_MIN_ROUNDS, AuthSettings, check_auth
from common.settings.base import SettingsError, check_bounds, parse
from common.settings.cache import (
    CACHE_MAX_TTL_S,
    CACHE_METHOD_RE,
    CacheSettings,
    check_cache,
    parse_cache_ttls,
)
from common.settings.edge import (
    GRPC_MAX_MESSAGE_BYTES,
    UPLOAD_JOB_PART_BYTES,
    EdgeSettings,
    check_edge,
    cors_origins,
)
from common.settings.flickr import (
    FLICKR_OAUTH_BASE,
    SANDBOX_DEMO_CONSUMER_KEY,
    SANDBOX_DEMO_CONSUMER_SECRET,
    FlickrEndpoints,
    FlickrSettings,
    check_flickr,
)
from common.settings.gateway import GatewaySettings
from common.settings.jobs import JobSettings, check_jobs
from common.settings.mover import MoverSettings, check_mover, parse_weights
from common.settings.process import ProcessSettings, check_process
from common.settings.stores import MONGO_WRITE_CONCERNS, StoreSettings, check_stores
from common.settings.vault import VaultSettings
from common.settings.worker import WorkerSettings, check_worker

__all__ = [
    "BCRYPT_MAX_ROUNDS",
    "BCRYPT_MIN_ROUNDS",
    "CACHE_MAX_TTL_S",
    "CACHE_METHOD_RE",
    "FLICKR_OAUTH_BASE",
    "GRPC_MAX_MESSAGE_BYTES",
    "MONGO_WRITE_CONCERNS",
    "RETIRED_VARIABLES",
    "SANDBOX_DEMO_CONSUMER_KEY",
    "SANDBOX_DEMO_CONSUMER_SECRET",
    "UPLOAD_JOB_PART_BYTES",
    "FlickrEndpoints",
    "Settings",
    "SettingsError",
    "cors_origins",
    "markdown_table",
    "parse_cache_ttls",
    "parse_weights",
]

# Variables an earlier FlickrHub read and this one does not: set, they fail the start rather than
# being ignored (an operator who set one meant something by it).
RETIRED_VARIABLES = {
    "EDGE_UPLOAD_MAX_BYTES": "replaced by UPLOAD_MAX_PHOTO_BYTES (the edge allows the photo plus 1 MiB "
    "for the job part, the gateway the photo)",
}


@dataclass(frozen=True)
class Settings(
    ProcessSettings,
    StoreSettings,
    FlickrSettings,
    VaultSettings,
    GatewaySettings,
    MoverSettings,
    WorkerSettings,
    CacheSettings,
    EdgeSettings,
    AuthSettings,
    JobSettings,
):
    """Every knob of FlickrHub, one area per base class; each service reads the fields it needs."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from `env` (default os.environ); `overrides` win (tests pass ports here)."""
        env = os.environ if env is None else env
        retired = sorted(RETIRED_VARIABLES.keys() & env.keys())
        if retired:
            raise SettingsError(f"{retired[0]}: {RETIRED_VARIABLES[retired[0]]}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = overrides.keys() - fields.keys()
        if unknown:
            raise TypeError(f"not settings fields: {sorted(unknown)}")
        values = {n: parse(f, env[f.metadata["env"]]) for n, f in fields.items() if f.metadata["env"] in env}
        settings = cls(**{**values, **overrides})
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values and combinations FlickrHub cannot run with; each error names its variable."""
        check_bounds(self)
        check_process(self)
        check_stores(self)
        check_flickr(self)
        check_mover(self)
        check_worker(self)
        check_cache(self)
        check_edge(self)
        check_auth(self)
        check_jobs(self)

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """Environment variable of a field."""
        return str(next(f.metadata["env"] for f in dataclasses.fields(cls) if f.name == field_name))

    @property
    def admission_horizon_s(self) -> float:
        """How long an open job may count against the caps: twice the maximum age plus every attempt.

        An id older than this is dropped from the counts, which repairs a reservation whose
        release was lost (a gateway killed mid-submission) and, at worst, under-counts a job
        stuck open longer than any job should be.
        """
        run = self.flickr_timeout_s * 2 + 30 + self.upload_ticket_timeout_s
        return 2 * self.job_max_age_s + self.worker_max_attempts * (run + self.worker_backoff_max_s)


def markdown_table() -> str:
    """The README's configuration table: every area's fields, in the order Settings lists the areas."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for area in Settings.__bases__:
        for f in dataclasses.fields(area):
            default = "" if f.metadata["secret"] else f.default
            shown = f"`{default}`" if default != "" else "(empty)"
            rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"

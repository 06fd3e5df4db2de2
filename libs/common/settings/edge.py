"""The REST edge and the size limits it shares with the gateway: request bodies and photos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from common.settings.base import SettingsError, setting

if TYPE_CHECKING:
    from common.settings import Settings

MIB = 1024 * 1024
# The largest gRPC message a FlickrHub server or channel accepts (common.service): a REST body
# becomes one such message (the proto form of a JSON body is about its size), so the body limit
# stays within it.
GRPC_MAX_MESSAGE_BYTES = 16 * MIB
# What a POST /v1/uploads body may hold beside the photo: the `job` part (edge.uploads refuses a
# larger one) and the multipart framing.
UPLOAD_JOB_PART_BYTES = MIB


@dataclass(frozen=True)
class EdgeSettings:
    """The REST edge (see services/edge) and the upload size both it and the gateway enforce."""

    edge_host: str = setting("EDGE_HOST", "127.0.0.1", "Interface the REST edge binds.")
    edge_port: int = setting("EDGE_PORT", 8080, "REST edge HTTP port.")
    edge_metrics_port: int = setting("EDGE_METRICS_PORT", 9103, "REST edge Prometheus port.")
    edge_max_body_bytes: int = setting(
        "EDGE_MAX_BODY_BYTES",
        10 * MIB,
        "Largest JSON request body the REST edge reads (413 above; uploads have their own limit). At "
        f"most {GRPC_MAX_MESSAGE_BYTES} (16 MiB), the largest gRPC message the gateway accepts.",
        at_least=1,
        at_most=GRPC_MAX_MESSAGE_BYTES,
    )
    upload_max_photo_bytes: int = setting(
        "UPLOAD_MAX_PHOTO_BYTES",
        100 * MIB,
        "Largest photo an upload may carry: the gateway refuses an UploadJob stream beyond it "
        "(INVALID_ARGUMENT), the edge a POST /v1/uploads body over it plus 1 MiB for the job part (413).",
        at_least=1,
    )
    cors_allowed_origins: str = setting(
        "CORS_ALLOWED_ORIGINS",
        "",
        "Comma list of browser origins (`https://app.example.com`) that get CORS headers; empty = no CORS.",
    )

    @property
    def edge_upload_max_bytes(self) -> int:
        """Largest POST /v1/uploads body: the largest photo and the job part."""
        return self.upload_max_photo_bytes + UPLOAD_JOB_PART_BYTES


def check_edge(s: Settings) -> None:
    """CORS_ALLOWED_ORIGINS lists origins, not URLs or wildcards."""
    for origin in cors_origins(s.cors_allowed_origins):
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
            raise SettingsError(
                f"CORS_ALLOWED_ORIGINS: expected scheme://host[:port] origins, got {origin!r}"
            )


def cors_origins(raw: str) -> frozenset[str]:
    """CORS_ALLOWED_ORIGINS as a set of `scheme://host[:port]` origins."""
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())

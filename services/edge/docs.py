"""`/openapi.json` and the Swagger UI at `/docs`, served by the edge with no external URL.

The document is generated once when the app is created (`edge.openapi`) and sent
as the same bytes on every call. Swagger UI's files come from the installed
`swagger-ui-bundle` package and are served same-origin under `/docs/static/`;
the page has no inline script or style (its start-up code is `/docs/static/
flickrhub-docs.js`), so a Content-Security-Policy of `default-src 'self'; img-src
'self' data:` is all it needs (Swagger UI's CSS draws its icons from data: URIs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import grpc  # type: ignore[import-untyped, unused-ignore]
from aiohttp import web

from edge import openapi, routes, status, transcode

TITLE = "FlickrHub API"
STATIC_PREFIX = "/docs/static/"
INIT_SCRIPT = "flickrhub-docs.js"
# Only these files of the package are served (not its sample index.html and initializer,
# which point at the public petstore).
VENDOR_FILES = (
    "swagger-ui-bundle.js",
    "swagger-ui-bundle.js.map",
    "swagger-ui.css",
    "swagger-ui.css.map",
    "favicon-16x16.png",
    "favicon-32x32.png",
)
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".map": "application/json"}
_CACHE = "public, max-age=86400"

# Relative URLs: the page keeps working behind a path prefix (`/api/docs` → `/api/docs/static/…`).
DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>FlickrHub API</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script src="docs/static/flickrhub-docs.js"></script>
</body>
</html>
"""

# validatorUrl: null keeps Swagger UI from sending the document to validator.swagger.io.
INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def vendor_dir() -> Path:
    """The folder of Swagger UI's dist files inside the installed swagger-ui-bundle package."""
    import swagger_ui_bundle  # type: ignore[import-untyped, unused-ignore]

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def _version() -> str:
    try:
        return metadata.version("flickrhub")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class Docs:
    """The generated document and the docs page's files, ready to send."""

    def __init__(self, modules: Sequence[routes.ProtoModule]) -> None:
        self.document = openapi.build_document(modules, title=TITLE, version=_version())
        self.document_bytes = transcode.dumps(self.document)
        self._etag = '"' + hashlib.sha256(self.document_bytes).hexdigest()[:32] + '"'
        folder = vendor_dir()
        self._files = {name: folder / name for name in VENDOR_FILES}

    async def openapi_json(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI document (the same bytes on every call)."""
        if request.headers.get("If-None-Match") == self._etag:
            return web.Response(status=304, headers={"ETag": self._etag})
        return web.Response(
            body=self.document_bytes, content_type="application/json", headers={"ETag": self._etag}
        )

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The Swagger UI page."""
        return web.Response(text=DOCS_HTML, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        """One allow-listed Swagger UI file, or the page's start-up script."""
        name = request.match_info["name"]
        if name == INIT_SCRIPT:
            return web.Response(
                text=INIT_JS, content_type="text/javascript", headers={"Cache-Control": "no-cache"}
            )
        path = self._files.get(name)
        if path is None:
            err = status.error(grpc.StatusCode.NOT_FOUND, f"no docs file {name!r}")
            return web.Response(status=err.status, body=err.json(), content_type="application/json")
        return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix], "Cache-Control": _CACHE})


def install(app: web.Application, modules: Sequence[routes.ProtoModule]) -> Docs:
    """Route `/openapi.json`, `/docs` and `/docs/static/{name}` (before the edge's catch-all route)."""
    docs = Docs(modules)
    app.router.add_get("/openapi.json", docs.openapi_json)
    app.router.add_get("/docs", docs.page)
    app.router.add_get(STATIC_PREFIX + "{name}", docs.static)
    return docs

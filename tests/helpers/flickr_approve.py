"""Playing the user at the sandbox's OAuth approval page, over HTTP, as a browser would."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin

import aiohttp

_VERIFIER = re.compile(r"id='verifier'>(\d{3}-\d{3}-\d{3})<")


class _Form(HTMLParser):
    """The approval form's action and fields (hidden inputs and the first option of each select)."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self._select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and self._select not in self.fields:
            self.fields[self._select] = a.get("value", "")


@dataclass
class Approval:
    """What the page answered to the decision."""

    status: int
    verifier: str = ""  # oob: the code shown on the page
    location: str = ""  # callback: where Flickr redirects the browser
    text: str = ""


async def decide(
    http: aiohttp.ClientSession, authorize_url: str, decision: str = "approve", user_nsid: str | None = None
) -> Approval:
    """Open the approval page and press one of its buttons (the redirect is not followed)."""
    async with http.get(authorize_url) as page:
        assert page.status == 200, await page.text()
        form = _Form()
        form.feed(await page.text())
    fields = dict(form.fields, decision=decision)
    if user_nsid is not None:
        fields["user_nsid"] = user_nsid
    async with http.post(urljoin(authorize_url, form.action), data=fields, allow_redirects=False) as resp:
        text = await resp.text()
        found = _VERIFIER.search(text)
        return Approval(
            status=resp.status,
            verifier=found.group(1) if found else "",
            location=resp.headers.get("Location", ""),
            text=text,
        )

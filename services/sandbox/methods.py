"""The Flickr methods the sandbox answers: params in, a response body (or a FlickrFault) out.

Data is fake but deterministic, derived from the params, so tests can assert it:
- a photo id exists when it is all digits and does not end in 0, and was not deleted;
- a search's `total` is 1 + crc32(its sorted filter params) % 1000, its photos' ids derive
  from the same filters and their position, and never end in 0, so getInfo finds them.
The only state a method touches is `photo_meta` (setMeta) and `deleted_photos` (delete).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.state import SEED_USERS, SandboxState, Token, User

Body = dict[str, Any]

PARAMETERLESS = "Parameterless searches have been disabled. Please use flickr.photos.getRecent instead."
# Search params that do not narrow a search: with only these, Flickr refuses it as parameterless.
_NOT_FILTERS = frozenset(
    {"method", "api_key", "format", "nojsoncallback", "jsoncallback", "page", "per_page", "extras", "sort",
     "safe_search", "content_type", "media", "privacy_filter", "tag_mode"}
)  # fmt: skip
_SIZES = (
    ("Square", 75, 75, "s"), ("Large Square", 150, 150, "q"), ("Thumbnail", 100, 75, "t"),
    ("Small", 240, 180, "m"), ("Small 320", 320, 240, "n"), ("Medium", 500, 375, ""),
    ("Medium 640", 640, 480, "z"), ("Medium 800", 800, 600, "c"), ("Large", 1024, 768, "b"),
    ("Original", 4000, 3000, "o"),
)  # fmt: skip
_EPOCH = 1_500_000_000  # fake dates are spread over the years after this instant


class FlickrFault(Exception):
    """A Flickr error answered inside the stat=fail envelope."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Call:
    """One authorized method call: its params (oauth_* included), the caller's token, the state."""

    method: str
    params: Mapping[str, str]
    token: Token | None
    state: SandboxState


Handler = Callable[[Call], Body]


def _text(value: object) -> dict[str, object]:
    return {"_content": value}


def _hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw is not None and raw.strip().isdigit() else default


def echo(call: Call) -> Body:
    """Every param but the oauth_* ones, each as {"_content": value}."""
    return {k: _text(v) for k, v in call.params.items() if not k.startswith("oauth_")}


def login(call: Call) -> Body:
    """The user of the caller's token."""
    if call.token is None:  # the app checks the login first; this keeps the method safe alone
        raise FlickrFault(99, "User not logged in / Insufficient permissions")
    return {"user": {"id": call.token.user_nsid, "username": _text(call.token.username)}}


def check_token(call: Call) -> Body:
    """The token's perms and user (auth.oauth.checkToken)."""
    token = call.token
    if token is None or call.params.get("oauth_token") != token.token:
        raise FlickrFault(98, "Invalid token")
    user = {"nsid": token.user_nsid, "username": token.username, "fullname": token.fullname}
    return {"oauth": {"token": _text(token.token), "perms": _text(token.perms), "user": user}}


def people_get_info(call: Call) -> Body:
    """A known user's profile; code 1 for anyone else."""
    user = call.state.users.get(call.params.get("user_id", ""))
    if user is None:
        raise FlickrFault(1, "User not found")
    url = f"https://www.flickr.com/photos/{user.nsid}/"
    person = {
        "id": user.nsid, "nsid": user.nsid, "ispro": 0, "iconserver": "0", "iconfarm": 0,
        "username": _text(user.username), "realname": _text(user.realname), "location": _text(user.location),
        "photosurl": _text(url), "profileurl": _text(f"https://www.flickr.com/people/{user.nsid}/"),
        "photos": {"firstdate": _text(str(_EPOCH)), "count": _text(_hash(user.nsid) % 5000)},
    }  # fmt: skip
    return {"person": person}


def _owner_of(photo_id: str) -> User:
    return SEED_USERS[int(photo_id) % len(SEED_USERS)]


def _secret(photo_id: str) -> str:
    return hashlib.sha1(photo_id.encode("ascii")).hexdigest()[:10]  # noqa: S324 - fake data, not security


def _list_photo(photo_id: str, owner: str, title: str) -> Body:
    return {
        "id": photo_id, "owner": owner, "secret": _secret(photo_id), "server": "65535", "farm": 66,
        "title": title, "ispublic": 1, "isfriend": 0, "isfamily": 0,
    }  # fmt: skip


def _listing(call: Call, key: str, owner: str | None) -> Body:
    per_page = min(max(_int(call.params.get("per_page"), 100), 1), 500)
    page = max(_int(call.params.get("page"), 1), 1)
    total = 1 + _hash(key) % 1000
    start = (page - 1) * per_page
    photos = []
    for index in range(start, min(start + per_page, total)):
        photo_id = str(50_000_000_000 + _hash(f"{key}#{index}") * 10 + 1 + index % 9)
        photo_owner = owner or _owner_of(photo_id).nsid
        photos.append(_list_photo(photo_id, photo_owner, f"Sandbox photo {index + 1}"))
    pages = math.ceil(total / per_page)
    return {"photos": {"page": page, "pages": pages, "perpage": per_page, "total": total, "photo": photos}}


def photos_search(call: Call) -> Body:
    """A deterministic page of fake photos; code 3 without a filter, code 2 for an unknown user_id."""
    filters = {
        k: v for k, v in call.params.items() if v and k not in _NOT_FILTERS and not k.startswith("oauth_")
    }
    if not filters:
        raise FlickrFault(3, PARAMETERLESS)
    owner = filters.get("user_id")
    if owner == "me" and call.token is not None:
        owner = call.token.user_nsid
    if owner is not None and owner not in call.state.users:
        raise FlickrFault(2, "Unknown user")
    return _listing(call, "&".join(f"{k}={v}" for k, v in sorted(filters.items())), owner)


def photos_get_recent(call: Call) -> Body:
    """A deterministic page of fake recent photos."""
    return _listing(call, "recent", None)


def _photo_id(call: Call) -> str:
    photo_id = call.params.get("photo_id", "")
    if not photo_id.isdigit() or photo_id.endswith("0") or photo_id in call.state.deleted_photos:
        raise FlickrFault(1, "Photo not found")
    return photo_id


def photos_get_info(call: Call) -> Body:
    """A photo's details, with any title/description set by setMeta."""
    photo_id = _photo_id(call)
    owner = _owner_of(photo_id)
    meta = call.state.photo_meta.get(photo_id, {})
    posted = str(_EPOCH + int(photo_id) % 200_000_000)
    dates = {"posted": posted, "taken": "2017-07-14 02:40:00", "takengranularity": 0, "lastupdate": posted}
    page = f"https://www.flickr.com/photos/{owner.nsid}/{photo_id}/"
    tags = [{"id": f"{photo_id}-sandbox", "author": owner.nsid, "raw": "sandbox", "_content": "sandbox"}]
    photo = {
        "id": photo_id, "secret": _secret(photo_id), "server": "65535", "farm": 66, "dateuploaded": posted,
        "isfavorite": 0, "license": "0", "rotation": 0, "media": "photo",
        "owner": {"nsid": owner.nsid, "username": owner.username, "realname": owner.realname,
                  "location": owner.location},
        "title": _text(meta.get("title", f"Sandbox photo {photo_id}")),
        "description": _text(meta.get("description", "")),
        "visibility": {"ispublic": 1, "isfriend": 0, "isfamily": 0},
        "dates": dates, "tags": {"tag": tags}, "urls": {"url": [{"type": "photopage", "_content": page}]},
    }  # fmt: skip
    return {"photo": photo}


def photos_get_sizes(call: Call) -> Body:
    """The usual ten sizes of a photo."""
    photo_id = _photo_id(call)
    base = f"https://live.staticflickr.com/65535/{photo_id}_{_secret(photo_id)}"
    page = f"https://www.flickr.com/photos/{_owner_of(photo_id).nsid}/{photo_id}/sizes"
    sizes = [
        {"label": label, "width": w, "height": h, "source": f"{base}{'_' + suffix if suffix else ''}.jpg",
         "url": f"{page}/{suffix or 'm'}/", "media": "photo"}
        for label, w, h, suffix in _SIZES
    ]  # fmt: skip
    return {"sizes": {"canblog": 0, "canprint": 0, "candownload": 1, "size": sizes}}


def photos_set_meta(call: Call) -> Body:
    """Remember a new title and/or description; code 2 when neither is given."""
    photo_id = _photo_id(call)
    meta = {k: call.params[k] for k in ("title", "description") if k in call.params}
    if not meta:
        raise FlickrFault(2, "At least one of title or description must be set")
    call.state.photo_meta.setdefault(photo_id, {}).update(meta)
    return {}


def photos_delete(call: Call) -> Body:
    """Forget a photo: later calls about it get code 1."""
    call.state.deleted_photos.add(_photo_id(call))
    return {}


def upload_check_tickets(call: Call) -> Body:
    """Async upload tickets: complete 0 pending, 1 done (with photoid), 2 failed; invalid=1 if unknown."""
    ids = [t.strip() for t in call.params.get("tickets", "").split(",") if t.strip()]
    if not ids:
        raise FlickrFault(1, "No tickets specified")  # Flickr requires the argument; the code is a guess
    book, now = call.state.uploads, call.state.clock()
    answers = []
    for ticket_id in ids:
        ticket = book.tickets.get(ticket_id)
        answers.append(ticket.answer(now) if ticket is not None else {"id": ticket_id, "invalid": 1})
    return {"uploader": {"ticket": answers}}


# The methods the sandbox implements; their perms come from common.flickr_methods.METHOD_PERMS.
METHODS: dict[str, Handler] = {
    "flickr.test.echo": echo,
    "flickr.test.login": login,
    "flickr.auth.oauth.checkToken": check_token,
    "flickr.people.getInfo": people_get_info,
    "flickr.photos.search": photos_search,
    "flickr.photos.getRecent": photos_get_recent,
    "flickr.photos.getInfo": photos_get_info,
    "flickr.photos.getSizes": photos_get_sizes,
    "flickr.photos.setMeta": photos_set_meta,
    "flickr.photos.delete": photos_delete,
    "flickr.photos.upload.checkTickets": upload_check_tickets,
}
# Methods that must be OAuth-signed even though they need no user permission.
SIGNED_ONLY = frozenset({"flickr.auth.oauth.checkToken"})

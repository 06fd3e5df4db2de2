"""What the sandbox remembers about uploads and replaces: the photos that arrived and async tickets.

Never the bytes: only their size and SHA-256, which is what tests compare.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

# First photo id the sandbox hands out; ids step by 10 and end in 1, so photos.getInfo finds them.
FIRST_PHOTO_ID = 60_000_000_001


@dataclass(frozen=True)
class UploadRecord:
    """One photo that arrived on /services/upload/ or /services/replace/."""

    kind: str  # "upload" or "replace"
    photo_id: str
    title: str
    size: int
    sha256: str
    content_type: str  # jpeg, png or gif (from the magic bytes)
    user_nsid: str
    ticket_id: str
    ts: float

    def public(self) -> dict[str, Any]:
        """The JSON form shown by `GET /_sandbox/uploads`."""
        return dict(vars(self))


@dataclass
class Ticket:
    """An async upload's ticket: pending until `ready_at`, then done (photo id) or failed."""

    ticket_id: str
    photo_id: str
    ready_at: float
    fail: bool = False

    def answer(self, now: float) -> dict[str, Any]:
        """The `<ticket>` element of checkTickets: complete 0 pending, 1 done, 2 failed."""
        if now < self.ready_at:
            return {"id": self.ticket_id, "complete": 0}
        if self.fail:
            return {"id": self.ticket_id, "complete": 2}
        return {"id": self.ticket_id, "complete": 1, "photoid": self.photo_id}


@dataclass
class UploadBook:
    """Uploads and tickets of one sandbox; ticket timing is set through the control interface."""

    uploads: list[UploadRecord] = field(default_factory=list)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    ticket_delay_s: float = 0.3
    ticket_fail: bool = False
    _photo_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0))
    _ticket_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_photo_id(self) -> str:
        """A fresh photo id."""
        return str(FIRST_PHOTO_ID + 10 * next(self._photo_ids))

    def new_ticket(self, photo_id: str, now: float) -> Ticket:
        """A ticket for `photo_id` that completes after the configured delay."""
        ticket = Ticket(
            f"{900_000 + next(self._ticket_ids)}", photo_id, now + self.ticket_delay_s, self.ticket_fail
        )
        self.tickets[ticket.ticket_id] = ticket
        return ticket

    def knows_photo(self, photo_id: str) -> bool:
        """True when `photo_id` was uploaded here."""
        return any(u.photo_id == photo_id for u in self.uploads)

    def duplicate_of(self, user_nsid: str, sha256: str) -> str:
        """The id of a photo this user already uploaded with the same bytes ("" if none)."""
        for upload in self.uploads:
            if upload.kind == "upload" and upload.user_nsid == user_nsid and upload.sha256 == sha256:
                return upload.photo_id
        return ""

    def clear(self) -> None:
        """Forget uploads and tickets; timing back to its defaults."""
        self.uploads.clear()
        self.tickets.clear()
        self.ticket_delay_s = 0.3
        self.ticket_fail = False

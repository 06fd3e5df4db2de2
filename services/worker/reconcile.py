"""Reconciling a write found mid-flight after a crash: which Flickr read proves its effect.

A worker that takes over a dead worker's run of a write cannot know whether the request left.
For a few methods one read settles it: the registry below names that read (method and params,
from the write's own params) and judges its answer:

- APPLIED: the effect holds on Flickr; the job completes without sending anything;
- ABSENT: the effect is certainly not there; sending the write now is safe (a takeover happens
  only after the dead run's lease ran out, so any request it sent ended long ago);
- UNKNOWN: anything else (the read failed, an odd answer); the job ends WRITE_OUTCOME_UNKNOWN.

Both registered writes are idempotent in effect (the same title set twice, a photo deleted
twice), so an ABSENT verdict that was wrong could never apply the change twice. A write method
missing from the registry (and every upload or replace) stays UNKNOWN. Pure logic: the worker
makes the read (worker/executor.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

APPLIED: Final = "applied"
ABSENT: Final = "absent"
UNKNOWN: Final = "unknown"

GET_INFO: Final = "flickr.photos.getInfo"
PHOTO_NOT_FOUND: Final = 1  # flickr.photos.getInfo error 1 (docs/flickr-api.md §5)
# The setMeta fields a caller may give (at least one); getInfo shows each as `photo.<field>._content`.
_META_FIELDS: Final = ("title", "description")


@dataclass(frozen=True)
class Answer:
    """What the read got back: Flickr's body on stat=ok, else Flickr's error code (0: none, a timeout)."""

    body: Mapping[str, Any] | None = None
    flickr_code: int = 0


@dataclass(frozen=True)
class _Rule:
    read_method: str
    read_params: Callable[[Mapping[str, str]], dict[str, str] | None]
    judge: Callable[[Mapping[str, str], Answer], str]


@dataclass(frozen=True)
class Check:
    """One write to reconcile: the read to make, and the verdict on its answer."""

    write_method: str
    write_params: Mapping[str, str]
    method: str
    params: dict[str, str]

    def verdict(self, answer: Answer) -> str:
        """APPLIED, ABSENT or UNKNOWN for the read's answer."""
        return _RULES[self.write_method].judge(self.write_params, answer)


def check_for(method: str, params: Mapping[str, str]) -> Check | None:
    """The read that proves `method`'s effect with these params; None when no read can."""
    rule = _RULES.get(method)
    if rule is None:
        return None
    read_params = rule.read_params(params)
    if read_params is None:
        return None
    return Check(method, dict(params), rule.read_method, read_params)


def reconcilable_methods() -> tuple[str, ...]:
    """The write methods a read can reconcile, sorted."""
    return tuple(sorted(_RULES))


def _photo_id_params(params: Mapping[str, str]) -> dict[str, str] | None:
    photo_id = params.get("photo_id", "")
    return {"photo_id": photo_id} if photo_id else None


def _set_meta_read(params: Mapping[str, str]) -> dict[str, str] | None:
    # With neither field the write only fails (code 2): nothing a read could prove.
    if not any(name in params for name in _META_FIELDS):
        return None
    return _photo_id_params(params)


def _photo(answer: Answer) -> Mapping[str, Any] | None:
    """The `photo` object of a getInfo answer, or None when there is none."""
    if answer.body is None:
        return None
    photo = answer.body.get("photo")
    return photo if isinstance(photo, Mapping) else None


def set_meta_verdict(params: Mapping[str, str], answer: Answer) -> str:
    """setMeta holds when every field it gives equals the photo's; any failure is UNKNOWN."""
    photo = _photo(answer)
    if photo is None:
        return UNKNOWN
    for name in _META_FIELDS:
        if name not in params:
            continue
        field = photo.get(name)
        current = field.get("_content") if isinstance(field, Mapping) else None
        if not isinstance(current, str):
            return UNKNOWN
        if current != params[name]:
            return ABSENT
    return APPLIED


def delete_verdict(params: Mapping[str, str], answer: Answer) -> str:
    """delete holds when Flickr no longer finds the photo (code 1); a photo still found is ABSENT."""
    if answer.body is None:
        return APPLIED if answer.flickr_code == PHOTO_NOT_FOUND else UNKNOWN
    photo = _photo(answer)
    return ABSENT if photo is not None and photo.get("id") == params.get("photo_id") else UNKNOWN


_RULES: Final[dict[str, _Rule]] = {
    "flickr.photos.setMeta": _Rule(GET_INFO, _set_meta_read, set_meta_verdict),
    "flickr.photos.delete": _Rule(GET_INFO, _photo_id_params, delete_verdict),
}

"""Reconciling a taken-over write: which read proves it, and the verdict on each kind of answer."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.methods import Call, FlickrFault, photos_delete, photos_get_info, photos_set_meta
from sandbox.state import SandboxState
from worker import reconcile
from worker.reconcile import ABSENT, APPLIED, UNKNOWN, Answer

SET_META = "flickr.photos.setMeta"
DELETE = "flickr.photos.delete"


def info(title: str = "Sandbox photo 123", description: str = "", photo_id: str = "123") -> Answer:
    """A getInfo answer as Flickr shapes it in JSON (docs/flickr-api.md §5: photo.title._content)."""
    photo: dict[str, Any] = {
        "id": photo_id,
        "title": {"_content": title},
        "description": {"_content": description},
    }
    return Answer(body={"photo": photo, "stat": "ok"})


def sandbox_info(state: SandboxState, photo_id: str) -> Answer:
    """What the sandbox's getInfo answers for `photo_id` (code 1 when it finds no such photo)."""
    try:
        return Answer(
            body=photos_get_info(Call("flickr.photos.getInfo", {"photo_id": photo_id}, None, state))
        )
    except FlickrFault as fault:
        return Answer(flickr_code=fault.code)


def verdict(method: str, params: dict[str, str], answer: Answer) -> str:
    check = reconcile.check_for(method, params)
    assert check is not None
    return check.verdict(answer)


def test_set_meta_and_delete_are_checked_with_get_info_on_their_photo() -> None:
    for method in (SET_META, DELETE):
        check = reconcile.check_for(method, {"photo_id": "123", "title": "t"})
        assert check is not None
        assert (check.method, check.params) == ("flickr.photos.getInfo", {"photo_id": "123"})
    assert reconcile.reconcilable_methods() == (DELETE, SET_META)


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("flickr.photos.addTags", {"photo_id": "123", "tags": "x"}),  # no read registered for it
        ("flickr.photosets.create", {"title": "t", "primary_photo_id": "123"}),
        (SET_META, {"title": "no photo id"}),
        (SET_META, {"photo_id": "123"}),  # neither title nor description: nothing to prove
        (DELETE, {}),
    ],
)
def test_a_write_no_read_can_prove_has_no_check(method: str, params: dict[str, str]) -> None:
    assert reconcile.check_for(method, params) is None


def test_set_meta_is_applied_when_every_given_field_matches() -> None:
    assert verdict(SET_META, {"photo_id": "123", "title": "new"}, info(title="new")) == APPLIED
    both = {"photo_id": "123", "title": "new", "description": "words"}
    assert verdict(SET_META, both, info(title="new", description="words")) == APPLIED
    # Only the fields the write gave count: the description it did not touch may be anything.
    assert verdict(SET_META, {"photo_id": "123", "title": "new"}, info("new", "other")) == APPLIED
    assert verdict(SET_META, {"photo_id": "123", "description": ""}, info("any", "")) == APPLIED


def test_set_meta_is_absent_when_a_given_field_differs() -> None:
    assert verdict(SET_META, {"photo_id": "123", "title": "new"}, info(title="old")) == ABSENT
    both = {"photo_id": "123", "title": "new", "description": "words"}
    assert verdict(SET_META, both, info(title="new", description="old words")) == ABSENT


@pytest.mark.parametrize(
    "answer",
    [
        Answer(flickr_code=1),  # photo not found: nothing to compare
        Answer(flickr_code=105),
        Answer(),  # no envelope at all: a timeout, an HTTP error
        Answer(body={"stat": "ok"}),
        Answer(body={"photo": "123"}),
        Answer(body={"photo": {"id": "123", "title": "not an object"}}),
        Answer(body={"photo": {"id": "123", "title": {"_content": 7}}}),
    ],
)
def test_set_meta_is_unknown_when_the_read_failed_or_answered_oddly(answer: Answer) -> None:
    assert verdict(SET_META, {"photo_id": "123", "title": "new"}, answer) == UNKNOWN


def test_delete_is_applied_when_the_photo_is_not_found_and_absent_when_it_is() -> None:
    assert verdict(DELETE, {"photo_id": "123"}, Answer(flickr_code=1)) == APPLIED
    assert verdict(DELETE, {"photo_id": "123"}, info()) == ABSENT


@pytest.mark.parametrize(
    "answer",
    [
        Answer(flickr_code=105),
        Answer(flickr_code=99),
        Answer(),
        Answer(body={"stat": "ok"}),
        info(photo_id="456"),  # some other photo: not an answer about this one
    ],
)
def test_delete_is_unknown_on_any_other_answer(answer: Answer) -> None:
    assert verdict(DELETE, {"photo_id": "123"}, answer) == UNKNOWN


def test_verdicts_follow_the_sandbox_get_info_before_and_after_each_write() -> None:
    state = SandboxState.demo()
    set_meta = {"photo_id": "123", "title": "once", "description": "twice"}
    assert verdict(SET_META, set_meta, sandbox_info(state, "123")) == ABSENT
    photos_set_meta(Call(SET_META, set_meta, None, state))
    assert verdict(SET_META, set_meta, sandbox_info(state, "123")) == APPLIED

    assert verdict(DELETE, {"photo_id": "123"}, sandbox_info(state, "123")) == ABSENT
    photos_delete(Call(DELETE, {"photo_id": "123"}, None, state))
    assert verdict(DELETE, {"photo_id": "123"}, sandbox_info(state, "123")) == APPLIED

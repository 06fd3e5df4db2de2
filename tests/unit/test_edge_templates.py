"""google.api.http path templates: parsing and matching (pure)."""

from __future__ import annotations

import pytest

from edge import templates


def test_literal_template_matches_only_itself() -> None:
    t = templates.parse("/v1/jobs")
    assert t.is_static
    assert t.match("/v1/jobs") == {}
    assert t.match("/v1/jobs/") is None
    assert t.match("/v1/jobsx") is None
    assert t.literal_count == 2


def test_field_variable_captures_one_segment_and_decodes_it() -> None:
    t = templates.parse("/v1/jobs/{job_id}")
    assert not t.is_static
    assert t.field_paths == ("job_id",)
    assert t.match("/v1/jobs/abc") == {"job_id": "abc"}
    assert t.match("/v1/jobs/a%2Fb%20c") == {"job_id": "a/b c"}
    assert t.match("/v1/jobs/a/b") is None
    assert t.match("/v1/jobs/") is None


def test_trailing_verb_is_split_off() -> None:
    t = templates.parse("/v1/jobs/{job_id}:watch")
    assert t.verb == "watch"
    assert t.match("/v1/jobs/abc:watch") == {"job_id": "abc"}
    assert t.match("/v1/jobs/a:b:watch") == {"job_id": "a:b"}
    assert t.match("/v1/jobs/abc") is None
    assert t.match("/v1/jobs/abc:cancel") is None


def test_nested_field_path() -> None:
    t = templates.parse("/v1/users/{user.id}/jobs")
    assert t.match("/v1/users/u1/jobs") == {"user.id": "u1"}


def test_variable_with_segments_binds_the_joined_path() -> None:
    t = templates.parse("/v1/{name=shelves/*/books/*}")
    assert t.field_paths == ("name",)
    assert t.match("/v1/shelves/s1/books/b%201") == {"name": "shelves/s1/books/b 1"}
    assert t.match("/v1/shelves/s1/books") is None


def test_double_wildcard_takes_the_rest_of_the_path() -> None:
    t = templates.parse("/v1/{path=files/**}:get")
    assert t.match("/v1/files/a/b/c:get") == {"path": "files/a/b/c"}
    anonymous = templates.parse("/static/**")
    assert anonymous.match("/static/x/y") == {}
    assert not anonymous.is_static


def test_single_wildcard_is_one_anonymous_segment() -> None:
    t = templates.parse("/v1/*/jobs")
    assert t.match("/v1/anything/jobs") == {}
    assert t.match("/v1/a/b/jobs") is None


def test_colon_in_an_earlier_segment_is_not_a_verb() -> None:
    t = templates.parse("/v1/a:b/c")
    assert t.verb == ""
    assert t.match("/v1/a:b/c") == {}


@pytest.mark.parametrize(
    "bad",
    [
        "v1/jobs",
        "/v1//jobs",
        "/v1/jobs/",
        "/v1/{job_id",
        "/v1/job_id}",
        "/v1/{}",
        "/v1/{1abc}",
        "/v1/{a.}",
        "/v1/{a}/{a}",
        "/v1/{a=}",
        "/v1/{a={b}}",
        "/v1/**/x",
        "/v1/x{a}",
        "/v1/{a}x",
        "/v1/jobs:",
        "/v1/jobs:a b",
        "/v1/j obs",
    ],
)
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(templates.TemplateError):
        templates.parse(bad)

"""google.api.http path templates parsed into matchers (pure: no I/O).

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template compiles to one anchored regular expression over the *raw* (still
percent-encoded) request path, so a `%2F` inside a single-segment variable never
splits it; captured values are percent-decoded afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Literal segments: RFC 3986 pchar without "{" / "}" / "/" ("*" only as a wildcard); verbs also without ":".
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@%:]+\Z")
_VERB = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@%]+\Z")
_SINGLE = "[^/]+"
_MULTI = ".*"


class TemplateError(ValueError):
    """A google.api.http path template does not follow the grammar."""


@dataclass(frozen=True)
class PathTemplate:
    """A compiled path template: `match(raw_path)` returns the path variables or None."""

    source: str
    verb: str
    field_paths: tuple[str, ...]
    literal_count: int
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def is_static(self) -> bool:
        """True when the template has no variables and no wildcards (an exact string)."""
        return not self.field_paths and "*" not in self.source

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Variables (field path → decoded value) when `raw_path` matches, else None."""
        found = self._regex.match(raw_path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in zip(self.field_paths, found.groups(), strict=True)}


def parse(template: str) -> PathTemplate:
    """Compile a google.api.http path template such as `/v1/jobs/{job_id}:watch`."""
    if not template.startswith("/"):
        raise TemplateError(f"{template!r}: a path template starts with '/'")
    body, verb = _split_verb(template)
    parser = _Parser(template)
    pattern = parser.segments(body[1:], top_level=True)
    if verb:
        pattern += re.escape(":" + verb)
    return PathTemplate(
        source=template,
        verb=verb,
        field_paths=tuple(parser.variables),
        literal_count=parser.literals,
        _regex=re.compile("/" + pattern + r"\Z"),
    )


def _split_verb(template: str) -> tuple[str, str]:
    # The verb is a ":" after the last "/" that is not inside a variable.
    depth = 0
    last_colon = -1
    for index, char in enumerate(template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            last_colon = -1
        elif char == ":" and depth == 0:
            last_colon = index
    if last_colon < 0:
        return template, ""
    verb = template[last_colon + 1 :]
    if not _VERB.match(verb):
        raise TemplateError(f"{template!r}: bad verb {verb!r}")
    return template[:last_colon], verb


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.variables: list[str] = []
        self.literals = 0
        self._seen_multi = False

    def fail(self, why: str) -> TemplateError:
        return TemplateError(f"{self.source!r}: {why}")

    def segments(self, text: str, *, top_level: bool) -> str:
        parts = _split_segments(text)
        if parts is None:
            raise self.fail("unbalanced braces")
        out: list[str] = []
        for part in parts:
            if self._seen_multi:
                raise self.fail("'**' must be the last segment")
            out.append(self.segment(part, top_level=top_level))
        return "/".join(out)

    def segment(self, part: str, *, top_level: bool) -> str:
        if part == "*":
            return _SINGLE
        if part == "**":
            self._seen_multi = True
            return _MULTI
        if part.startswith("{"):
            if not top_level:
                raise self.fail("variables cannot nest")
            if not part.endswith("}"):
                raise self.fail(f"bad variable {part!r}")
            return self.variable(part[1:-1])
        if not _LITERAL.match(part):
            raise self.fail(f"bad literal segment {part!r}")
        self.literals += 1
        return re.escape(part)

    def variable(self, inner: str) -> str:
        name, _, sub = inner.partition("=")
        if not name or not all(_IDENT.match(p) for p in name.split(".")):
            raise self.fail(f"bad field path {name!r}")
        if name in self.variables:
            raise self.fail(f"field {name!r} bound twice")
        self.variables.append(name)
        if not sub:
            if "=" in inner:
                raise self.fail(f"empty segments for {name!r}")
            return f"({_SINGLE})"
        return f"({self.segments(sub, top_level=False)})"


def _split_segments(text: str) -> list[str] | None:
    """Split on "/" outside braces; None when braces do not balance."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                return None
        elif char == "/" and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        return None
    parts.append(text[start:])
    return parts

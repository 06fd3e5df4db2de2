"""The log filter keeps mapping-style arguments (`log.info("%(x)s", {...})`) formattable."""

from __future__ import annotations

import logging

from common.logs import _ContextFilter


def test_mapping_args_still_format_after_the_filter() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "Calling %s", ({"method": "m"},), None)
    assert _ContextFilter("svc").filter(record)
    assert record.getMessage() == "Calling {'method': 'm'}"
    named = logging.LogRecord("t", logging.INFO, __file__, 1, "%(who)s called", ({"who": "x"},), None)
    _ContextFilter("svc").filter(named)
    assert named.getMessage() == "x called"

"""The hot queries run on indexes: explain() shows an index scan, never a collection scan."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from common.mongo import Mongo


def _stages(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "stage" in plan:
            found.add(str(plan["stage"]))
        for value in plan.values():
            found |= _stages(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _stages(value)
    return found


@pytest.mark.parametrize(
    ("collection", "query"),
    [
        ("jobs", {"job_id": "J"}),
        ("jobs", {"job_id": "J", "rev": 3}),
        ("tokens", {"user_id": "U"}),
    ],
)
async def test_hot_queries_use_an_index(
    mongo_url: str, mongo_db_name: str, collection: str, query: dict[str, Any]
) -> None:
    mongo = Mongo.connect(mongo_url, mongo_db_name)
    try:
        await mongo.ensure_indexes()
        await mongo.db[collection].insert_many(
            [{"job_id": uuid.uuid4().hex, "user_id": uuid.uuid4().hex, "rev": 0} for _ in range(200)]
        )
        plan = (await mongo.db[collection].find(query).explain())["queryPlanner"]["winningPlan"]
    finally:
        await mongo.client.drop_database(mongo_db_name)
        await mongo.close()
    assert "IXSCAN" in _stages(plan), plan
    assert "COLLSCAN" not in _stages(plan), plan

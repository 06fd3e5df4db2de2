"""The gateway's policy: which RPC needs which role, the no-credential ones read from the contract."""

from __future__ import annotations

from flickrhub.v1 import access_pb2
from gateway import policy


def _contract_methods() -> dict[str, bool]:
    """Every RPC the gateway serves (full gRPC path) and whether the contract marks it no_credential."""
    return {
        f"/{service.full_name}/{method.name}": method.GetOptions().Extensions[access_pb2.no_credential]
        for module in policy.CONTRACT
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_only_the_rpcs_the_contract_marks_need_no_credential() -> None:
    methods = _contract_methods()
    open_ = {path for path in methods if policy.rule(path).role == policy.OPEN}
    assert open_ == {path for path, marked in methods.items() if marked}
    assert open_ == {"/flickrhub.v1.AuthService/AuthorizationCallback"}
    assert open_ == policy.NO_CREDENTIAL


def test_no_rpc_is_both_marked_in_the_contract_and_listed_in_the_table() -> None:
    # A mark and a row for the same RPC would be two answers to one question (the row would win).
    assert policy.NO_CREDENTIAL
    assert policy.NO_CREDENTIAL.isdisjoint(policy.RULES)


def test_an_rpc_neither_listed_nor_marked_needs_an_admin_key() -> None:
    assert policy.rule("/flickrhub.v1.JobService/NoSuchMethod").role == policy.ADMIN
    assert policy.rule("/grpc.health.v1.Health/Check").role == policy.OPEN
    assert policy.is_unchecked("/grpc.health.v1.Health/Check")

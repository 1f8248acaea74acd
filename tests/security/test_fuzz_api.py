"""The acceptance fuzzer: schemathesis against the running server's own OpenAPI document.

With no credentials, a device's token and the admin token, generated requests
(valid and invalid, fixed seed, bounded count) to every documented operation
must get no 5xx and no answer outside the document: status, content type and
body schema. A finding names the operation, the request and the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import ServerHandle, copy_fleet, running_server

DEVICE = "berlin-pos-0001"
#: Generated requests per operation and generation mode (valid, invalid).
EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, str]]:
    """`engine serve` on the example fleet, one device enrolled (its token)."""
    repo = copy_fleet(tmp_path_factory.mktemp("fuzz") / "fleet", settings='field_release: "3.0.1"')
    with running_server(repo) as server:
        yield server, server.enroll(DEVICE)


def _examples(
    operation: Any,
    mode: GenerationMode,
    server: ServerHandle,
    session: requests.Session,
    headers: dict[str, str],
    device: str | None,
) -> Any:
    """A Hypothesis test sending ``operation``'s generated requests and checking answers."""

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if device is not None and "device" in (case.path_parameters or {}):
            case.path_parameters["device"] = device
        case.call_and_validate(
            base_url=server.url, session=session, headers=headers, checks=CHECKS, timeout=30
        )

    return run


def _fuzz(server: ServerHandle, headers: dict[str, str], device: str | None) -> list[str]:
    """Run every operation's examples; the findings, as text."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", timeout=30)
    findings: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema fails here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _examples(operation, mode, server, session, headers, device)()
            except Unsatisfiable:
                pass  # no parameter or body to make invalid: nothing to send
            except (Exception, BaseExceptionGroup) as e:  # noted; on with the next one
                findings.append(f"{operation.label} ({mode.value}): {e}")
    return findings


@pytest.mark.parametrize("credentials", ["none", "device", "admin"])
def test_fuzzer_finds_no_5xx_and_nothing_undocumented(
    fuzzed: tuple[ServerHandle, str], credentials: str
) -> None:
    """Generated requests with no, a device's or the admin credential get only documented
    answers from every operation (device, admin, field, release and install APIs)."""
    server, token = fuzzed
    headers: dict[str, str] = {}
    device = None
    if credentials == "device":
        headers = {"Authorization": f"Bearer {token}"}
        device = DEVICE
    elif credentials == "admin":
        headers = server.admin_headers()
    findings = _fuzz(server, headers, device)
    assert not findings, "\n\n".join(findings[:10])

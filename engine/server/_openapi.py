"""The server's OpenAPI document made complete: credentials per route, every status it
answers, the error body, and the JSON shape of operator and field answers.

The routes read bodies and write answers by hand (the check-in path skips
FastAPI's machinery), so what FastAPI infers is filled in here, in one place,
from tables: a route's answers are documented where a client reads them and
the schema-driven fuzzer (tests/security/test_fuzz_api.py) holds the server to it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from engine.rollouts.status import DeviceStatus, RolloutStatus
from states.protocol import CheckinRequest, EnrollRequest, EventBatch, Heartbeat

__all__ = ["complete_openapi"]

DEVICE_SCHEME = "DeviceToken"
ADMIN_SCHEME = "AdminToken"


class ErrorBody(BaseModel):
    """Every refusal: what is wrong, in words."""

    detail: str


class AdminDevice(BaseModel):
    """One device as the operator API lists it (later versions may add fields)."""

    device: str
    platform: str | None
    enrolled: bool
    enrolled_at: datetime | None
    revoked: bool
    revoked_at: datetime | None
    agent_version: str | None
    known_good: str | None
    last_checkin: datetime | None
    last_result: str | None
    transaction_target: str | None
    heartbeat_version: str | None
    heartbeat_at: datetime | None
    online: bool


class Revoked(BaseModel):
    """A revocation done."""

    device: str
    revoked: bool


class RolloutDetail(RolloutStatus):
    """One rollout with its devices (the first 10,000, in wave order)."""

    devices: list[DeviceStatus]


class AdminStatus(BaseModel):
    """Fleet status for operators."""

    time: datetime
    devices: int
    enrolled: int
    revoked: int
    online: int
    offline: int
    versions: dict[str, int]
    rollouts: list[RolloutStatus]


class ReleaseRow(BaseModel):
    """A release the server serves."""

    version: str
    serial: int
    signed: bool


class ReleaseList(BaseModel):
    """Every release served, oldest serial first."""

    releases: list[ReleaseRow]


class FieldVersion(BaseModel):
    """What agents in the field read from /diags/persistentagentversion."""

    persistent_agent_version: str
    persistent_agent_hash_py: str | None = Field(description="sha256 of nats_agent.py (Windows)")
    persistent_agent_hash_linux: str | None
    persistent_agent_hash_macos: str | None


class Health(BaseModel):
    """The replica's health."""

    status: str


class BundleRow(BaseModel):
    """A runtime bundle the server serves."""

    target: str
    platform: str
    arch: str
    python: str
    runtime_version: str
    bundle_sha256: str
    signed: bool
    created: str | None


#: (method, path) -> the JSON model of its 200 answer.
_ANSWERS: dict[tuple[str, str], Any] = {
    ("get", "/v1/admin/devices"): list[AdminDevice],
    ("post", "/v1/admin/devices/{device}/revoke"): Revoked,
    ("get", "/v1/admin/rollouts"): list[RolloutStatus],
    ("get", "/v1/admin/rollouts/{rollout}"): RolloutDetail,
    ("post", "/v1/admin/rollouts/{rollout}/{action}"): RolloutStatus,
    ("get", "/v1/admin/status"): AdminStatus,
    ("get", "/v1/releases"): ReleaseList,
    ("get", "/diags/persistentagentversion"): FieldVersion,
    ("get", "/healthz"): Health,
    ("get", "/runtime/bundles"): list[BundleRow],
}

#: Request bodies the routes read by hand.
_BODIES = (CheckinRequest, EnrollRequest, EventBatch, Heartbeat)

#: Path prefixes of routes that read or write the store (they may answer 503).
_STORE_PREFIXES = ("/v1/enroll", "/v1/devices/", "/v1/admin/", "/v1/releases", "/diags/",
                   "/installerFiles/", "/healthz")  # fmt: skip

#: Path prefixes of routes that send files with HTTP Range support.
_FILE_PREFIXES = ("/v1/artifacts/", "/runtime/bundles/{target}", "/installerFiles/")

_RANGE = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "bytes=START-END, bytes=START- or bytes=-SUFFIX (RFC 9110)",
    "schema": {"type": "string", "maxLength": 200},
}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}

_UNAVAILABLE = "the store is unavailable; try again after Retry-After seconds"


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def _add_schema(components: dict[str, Any], model: Any) -> dict[str, Any]:
    """Put ``model`` (and what it refers to) into ``components``; its schema or $ref."""
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    if isinstance(model, type) and issubclass(model, BaseModel):
        components.setdefault(model.__name__, schema)
        return {"$ref": f"#/components/schemas/{model.__name__}"}
    return schema


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``schema`` (FastAPI's document): bodies, answers, errors, credentials."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (*_BODIES, ErrorBody):
        _add_schema(schemas, model)
    components["securitySchemes"] = {
        DEVICE_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "the device's own token (POST /v1/enroll)",
        },
        ADMIN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "the admin token (.engine/admin.token)",
        },
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(schemas, path, method, operation)
    return schema


def _complete_operation(
    schemas: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    answer = _ANSWERS.get((method, path))
    if answer is not None:
        ok = responses.setdefault("200", {"description": "OK"})
        ok["content"] = {"application/json": {"schema": _add_schema(schemas, answer)}}
    if path.startswith("/v1/devices/"):
        operation["security"] = [{DEVICE_SCHEME: []}]
        responses.setdefault("404", {"description": "not a device id"})
        responses.setdefault("401", {"description": "no token, not enrolled, or revoked"})
    elif path.startswith("/v1/admin/") or path == "/metrics":  # /metrics: or its own token
        operation["security"] = [{ADMIN_SCHEME: []}]
    if path.startswith(_FILE_PREFIXES):
        operation.setdefault("parameters", []).append(dict(_RANGE))
        responses.setdefault("206", {"description": "the requested byte range"})
        responses["400"] = {"description": "a malformed Range header", "content": _TEXT}
        responses["416"] = {"description": "the range lies outside the file", "content": _TEXT}
    if path.startswith(_STORE_PREFIXES):
        responses.setdefault("503", {"description": _UNAVAILABLE})
    if "422" in responses:
        responses["422"]["description"] = "a value is malformed or out of range (named)"
    for status, response in responses.items():
        if status.isascii() and status.isdigit() and int(status) >= 400:
            if path.startswith(_FILE_PREFIXES) and status in ("400", "416"):
                continue
            if path == "/healthz":
                response["content"] = {"application/json": {"schema": _add_schema(schemas, Health)}}
            else:
                response["content"] = _error_content()
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)

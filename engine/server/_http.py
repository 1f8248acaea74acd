"""Request bodies and error answers shared by every route: size cap, JSON, clear 4xx."""

from __future__ import annotations

import os
import re
from typing import Any, NoReturn, TypeVar

import orjson
from fastapi import HTTPException, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ValidationError

__all__ = [
    "DEVICE_RE",
    "Refusal",
    "body_spec",
    "error_body",
    "file_response",
    "json_response",
    "parse_body",
    "read_body",
    "refuse",
    "validation_message",
]

_M = TypeVar("_M", bound=BaseModel)

#: A device id as states.protocol allows it.
DEVICE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}\Z")


class Refusal(HTTPException):
    """An HTTPException whose answer also carries a machine-readable ``code``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None, code: str) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code


def error_body(e: HTTPException) -> dict[str, Any]:
    """The JSON answer of a refusal: ``{"detail": ...}``, plus ``"code"`` when it has one."""
    body: dict[str, Any] = {"detail": e.detail}
    if isinstance(e, Refusal):
        body["code"] = e.code
    return body


def refuse(
    status: int, detail: str, headers: dict[str, str] | None = None, *, code: str | None = None
) -> NoReturn:
    """Answer ``status`` with ``{"detail": detail}`` (and ``"code"`` when given); nothing
    after this runs."""
    if code is not None:
        raise Refusal(status, detail, headers, code)
    raise HTTPException(status_code=status, detail=detail, headers=headers)


def file_response(
    path: str | os.PathLike[str], media_type: str, sha256: str | None, *, immutable: bool = False
) -> FileResponse:
    """A file with HTTP Range support; ETag is its sha256 when known. ``immutable``: its
    content never changes under this URL (cached for a year), else clients revalidate."""
    headers = {"Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache"}
    if sha256 is not None:
        headers["ETag"] = f'"{sha256}"'
    return FileResponse(path, media_type=media_type, headers=headers)


def json_response(data: Any, status: int = 200) -> Response:
    """A JSON answer serialised with orjson (datetimes as ISO 8601)."""
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            refuse(400, f"Content-Length {declared[:40]!r} is not a number")
        if length > limit:
            refuse(413, f"request body of {length} bytes exceeds the limit of {limit} bytes")
        # The HTTP parser holds a body to its declared length.
        return await request.body()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            refuse(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(request: Request, model: type[_M], limit: int) -> _M:
    """Read and validate the body as ``model``: 413 too big, 400 not JSON, 422 wrong shape."""
    body = await read_body(request, limit)
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        refuse(*validation_message(model, e))


def validation_message(model: type[Any], error: ValidationError) -> tuple[int, str]:
    """(status, message) for a body that failed ``model``: 400 not JSON, 422 wrong shape."""
    errors = error.errors(include_url=False, include_input=False, include_context=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return 400, f"request body is not valid JSON: {errors[0]['msg']}"
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in errors[:10]
    )
    return 422, f"request body is not a valid {model.__name__}: {problems}"


def body_spec(model: type[Any]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body of ``model`` (parsed by hand)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }

"""Endpoints the agents already in the field call (seed/agent-update-mechanism.md).

- ``GET /diags/persistentagentversion``: the field release's version and the
  sha256 of its main file (``nats_agent.py``) per platform;
- ``GET /installerFiles/<Platform>/Agent/<path>``: a file of the field release.

The *field release* is engine.yaml's ``field_release`` when set; else the
newest release (highest serial) recorded by ``engine apply`` whose rollouts
all completed; else the newest recorded release at all.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import select

from engine.server._device_api import serve_artifact
from engine.server._http import json_response, refuse
from engine.server._releases import Release
from engine.server.app import ServerState
from engine.store.schema import rollouts
from fleetbase.platform import Platform
from states.manifest import validate_relative_path

__all__ = ["FIELD_AGENT_FILE", "PLATFORM_DIRS", "field_release", "router"]

#: The agent's main file, whose hash the field endpoint reports per platform.
FIELD_AGENT_FILE = "nats_agent.py"

#: Rollout states in which a release is still moving.
_UNFINISHED = frozenset({"waiting", "active", "paused", "halted"})

#: The platform names used in the field's installer paths.
PLATFORM_DIRS: dict[str, Platform] = {
    "Windows": Platform.WINDOWS,
    "Linux": Platform.LINUX,
    "MacOS": Platform.MACOS,
}


def field_release(state: ServerState) -> Release | None:
    """The release the field endpoints describe, or None when there is none yet."""
    wanted = state.settings.field_release
    if wanted is not None:
        return state.releases.get(str(wanted))
    recorded = state.releases.recorded()
    if not recorded:
        return None
    completed = _completed_versions(state)
    done = [r for r in recorded if r.version in completed]
    return (done or recorded)[-1]


def _completed_versions(state: ServerState) -> set[str]:
    """Releases with a completed rollout and none still waiting, active, paused or halted."""
    with state.store.read() as conn:
        rows = conn.execute(select(rollouts.c.release, rollouts.c.state)).all()
    seen: dict[str, set[str]] = {}
    for release, status in rows:
        seen.setdefault(str(release), set()).add(str(status))
    return {r for r, s in seen.items() if "completed" in s and not s & _UNFINISHED}


def _hash(release: Release, platform: Platform) -> str | None:
    entry = release.file(platform, FIELD_AGENT_FILE)
    return None if entry is None else entry.sha256


def router(state: ServerState) -> APIRouter:
    """The field-compatible routes, bound to ``state``."""
    api = APIRouter(tags=["field-compatible"])

    @api.get(
        "/diags/persistentagentversion",
        response_model=None,
        responses={
            200: {
                "content": {
                    "application/json": {
                        "example": {
                            "persistent_agent_version": "3.0.1",
                            "persistent_agent_hash_py": "sha256 of nats_agent.py (Windows)",
                            "persistent_agent_hash_linux": "sha256 of nats_agent.py (Linux)",
                            "persistent_agent_hash_macos": "sha256 of nats_agent.py (macOS)",
                        }
                    }
                }
            },
            404: {"description": "no field release yet"},
        },
    )
    async def persistent_agent_version() -> Response:
        """The field release's version and its agent file's sha256 per platform."""
        release = field_release(state)
        if release is None:
            refuse(
                404,
                "no field release: set field_release in engine.yaml or apply a release "
                "(engine apply)",
            )
        return json_response(
            {
                "persistent_agent_version": release.version,
                "persistent_agent_hash_py": _hash(release, Platform.WINDOWS),
                "persistent_agent_hash_linux": _hash(release, Platform.LINUX),
                "persistent_agent_hash_macos": _hash(release, Platform.MACOS),
            }
        )

    @api.get(
        "/installerFiles/{platform}/Agent/{path:path}",
        response_model=None,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            404: {"description": "no such platform, release or file"},
        },
    )
    async def installer_file(platform: str, path: str) -> Response:
        """A file of the field release for ``platform`` (Windows, Linux or MacOS)."""
        target = PLATFORM_DIRS.get(platform)
        if target is None:
            refuse(404, f"unknown platform {platform[:40]!r}: use one of Windows, Linux, MacOS")
        try:
            validate_relative_path(path)
        except ValueError as e:
            refuse(404, f"not a file of the agent: {e}")
        release = field_release(state)
        if release is None:
            refuse(404, "no field release: set field_release in engine.yaml or apply a release")
        entry = release.file(target, path)
        if entry is None:
            refuse(404, f"release {release.version} has no file {path[:200]!r} for {platform}")
        return await serve_artifact(state, entry.sha256)

    return api

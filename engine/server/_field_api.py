"""Endpoints the agents already in the field call to update themselves (docs/server.md).

- ``GET /diags/persistentagentversion``: the field release's version and the
  sha256 of its main file (``nats_agent.py``) per platform;
- ``GET /installerFiles/<Platform>/Agent/<path>``: a file of the field release.

Old agents take whatever these describe, with no canary and no halt, so the
*field release* is only ever a release known to be good:

1. engine.yaml's ``field_release`` when set (the loader checks it names a release);
2. else the newest release (highest serial) recorded by ``engine apply`` whose
   rollouts all completed (a rollout superseded after it completed counts; one
   waiting, active, paused, halted, aborted or superseded before it completed
   does not);
3. else, before any release completed, the release the fleet runs: the version
   most devices report, among the known releases (the higher serial on a tie);
4. else none: the endpoints answer 404 with a JSON error.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import Connection, func, select

from engine.rollouts.model import RolloutState
from engine.server._device_api import serve_artifact
from engine.server._http import json_response, refuse
from engine.server._releases import Release
from engine.server.state import ServerState
from engine.store.schema import reports, rollouts
from fleetbase.platform import Platform
from states.manifest import validate_relative_path

__all__ = ["FIELD_AGENT_FILE", "PLATFORM_DIRS", "field_release", "router"]

#: The agent's main file, whose hash the field endpoint reports per platform.
FIELD_AGENT_FILE = "nats_agent.py"

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
    with state.store.read() as conn:
        done = _completed_versions(conn)
        running = [] if done else _reported_versions(conn)
    if done:  # apply records a release before any rollout of it
        found = [r for r in state.releases.recorded() if r.version in done]
        return found[-1] if found else None
    return _fleet_release(running, state)


def _completed_versions(conn: Connection) -> set[str]:
    """Releases with at least one rollout, every one of which completed (perhaps superseded
    afterwards)."""
    rows = conn.execute(select(rollouts.c.release, rollouts.c.state, rollouts.c.completed_at)).all()
    good: dict[str, bool] = {}
    for release, status, completed_at in rows:
        ok = status == RolloutState.COMPLETED.value or (
            status == RolloutState.SUPERSEDED.value and completed_at is not None
        )
        good[str(release)] = good.get(str(release), True) and ok
    return {release for release, ok in good.items() if ok}


def _reported_versions(conn: Connection) -> list[tuple[str, int]]:
    """(agent version, devices reporting it) over every stored report."""
    rows = conn.execute(
        select(reports.c.agent_version, func.count())
        .where(reports.c.agent_version.is_not(None))
        .group_by(reports.c.agent_version)
    ).all()
    return [(str(v), int(n)) for v, n in rows]


def _fleet_release(running: list[tuple[str, int]], state: ServerState) -> Release | None:
    """The known release most devices report running (the higher serial on a tie)."""
    if not running:
        return None
    known = {r.version: r for r in state.releases.all()}
    ranked = [(n, known[v].serial, known[v]) for v, n in running if v in known]
    if not ranked:
        return None
    return max(ranked, key=lambda t: (t[0], t[1]))[2]


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
            404: {"description": "no field release yet (JSON error)"},
        },
    )
    async def persistent_agent_version() -> Response:
        """The field release's version and its agent file's sha256 per platform."""
        release = field_release(state)
        if release is None:
            refuse(
                404,
                "no field release: no release has completed its rollouts and no device "
                "reports a known release; set field_release in engine.yaml",
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
            refuse(404, "no field release: set field_release in engine.yaml or complete a rollout")
        entry = release.file(target, path)
        if entry is None:
            refuse(404, f"release {release.version} has no file {path[:200]!r} for {platform}")
        return await serve_artifact(state, entry.sha256)

    return api

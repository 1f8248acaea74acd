"""Runtime bundles for devices that install the runtime offline (docs/runtime-bundle.md).

- ``GET /runtime/bundles``: one entry per target (target, platform, arch,
  python, runtime_version, bundle_sha256, signed, created);
- ``GET /runtime/bundles/<target>/<file>``: ``bundle.json``, ``bundle.json.sig``
  or a wheel the manifest lists, with HTTP Range support;
- ``GET /runtime/releases/<version>/<target>/<file>``: the same for a runtime
  release (``runtime-releases/<version>/`` in the operator repo), which devices
  in a runtime rollout install beside their runtime.

No credential: bundles are public and signed; devices check the signature.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from engine.bundles.catalog import bundle_file, list_bundles
from engine.server._http import file_response, json_response, refuse
from engine.server.state import ServerState
from fleetbase.version import Version, VersionError

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    """The routes serving the bundles under ``state.settings.runtime_bundles_dir``."""
    api = APIRouter(tags=["runtime bundles"])
    root = state.settings.runtime_bundles_dir

    @api.get("/runtime/bundles", responses={200: {"description": "the bundles, by target"}})
    async def bundles() -> Response:
        """The runtime bundles this server has, one per target."""
        found = await anyio.to_thread.run_sync(list_bundles, root)
        return json_response([b.as_json() for b in found])

    @api.get(
        "/runtime/bundles/{target}/{name:path}",
        response_model=None,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            206: {"description": "the requested byte range (Range: bytes=START-END)"},
            404: {"description": "no such target, or a file its bundle does not list"},
        },
    )
    async def bundle(target: str, name: str) -> Response:
        """A file of ``target``'s bundle: bundle.json, bundle.json.sig or a listed wheel."""
        found = await anyio.to_thread.run_sync(bundle_file, root, target, name)
        if found is None:
            known = await anyio.to_thread.run_sync(list_bundles, root)
            if target not in {b.target for b in known}:
                refuse(404, f"no runtime bundle for target {target[:80]!r}")
            refuse(404, f"the {target} bundle has no file {name[:200]!r}")
        path, sha256 = found
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return file_response(path, media, sha256)

    releases = state.settings.runtime_releases_dir

    @api.get(
        "/runtime/releases/{version}/{target}/{name}",
        response_model=None,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            206: {"description": "the requested byte range (Range: bytes=START-END)"},
            404: {"description": "no such runtime release or target, or an unlisted file"},
        },
    )
    async def runtime_release(version: str, target: str, name: str) -> Response:
        """A file of a runtime release's bundle for ``target``."""
        try:
            Version(version)
        except VersionError:
            refuse(404, f"not a runtime release: {version[:80]!r}")
        found = await anyio.to_thread.run_sync(bundle_file, releases / version, target, name)
        if found is None:
            refuse(404, f"runtime release {version} has no file {target[:80]}/{name[:200]}")
        path, sha256 = found
        media = "application/json" if name.endswith(".json") else "application/octet-stream"
        return file_response(path, media, sha256)

    return api

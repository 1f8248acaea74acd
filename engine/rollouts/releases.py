"""Recording releases for the server: the exact signed manifest bytes, signature and files.

``engine apply`` stores every release a rollout moves devices to or from, so
that any server replica serves them from the database.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from sqlalchemy import Connection, insert, select, update

from engine.planner import ReleaseView
from engine.rollouts.errors import RolloutError
from engine.store.schema import releases
from states.manifest import ReleaseManifest

__all__ = ["record_release"]


def _files_json(manifest: ReleaseManifest) -> str:
    return json.dumps(
        {
            platform.value: [
                {"path": f.path, "sha256": f.sha256, "size": f.size, "source": f.source}
                for f in release.files
            ]
            for platform, release in manifest.platforms.items()
        },
        sort_keys=True,
    )


def record_release(conn: Connection, release: ReleaseView, now: datetime) -> bool:
    """Store a release's exact manifest and signature bytes; True when it has a signature.

    A version already stored with other bytes is replaced (the operator
    re-signed or rebuilt it). Raises RolloutError when the manifest file
    changed since the repo was loaded.
    """
    manifest = release.manifest
    try:
        data = release.path.read_bytes()
        signature = (
            release.signature_path.read_bytes() if release.signature_path is not None else None
        )
    except OSError as e:
        raise RolloutError(f"cannot read release {manifest.version}: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != release.sha256:
        raise RolloutError(
            f"{release.path} changed while applying (sha256 {digest[:12]}, "
            f"loaded {release.sha256[:12]}); run `engine apply` again"
        )
    version = str(manifest.version)
    values = {
        "serial": manifest.serial,
        "manifest": data,
        "signature": signature,
        "manifest_sha256": digest,
        "files": _files_json(manifest),
        "recorded_at": now,
    }
    found = conn.execute(
        select(releases.c.manifest_sha256, releases.c.signature).where(
            releases.c.version == version
        )
    ).first()
    if found is None:
        conn.execute(insert(releases).values(version=version, **values))
    elif found[0] != digest or found[1] != signature:
        conn.execute(update(releases).where(releases.c.version == version).values(**values))
    return signature is not None

"""The server's shared credentials: the admin token, the fleet enrollment secret, and the
read-only metrics token (``GET /metrics`` only).

Each comes from an environment variable when set (``ENGINE_ADMIN_TOKEN``,
``ENGINE_ENROLLMENT_SECRET``, ``ENGINE_METRICS_TOKEN``), else from a file under
``<repo>/.engine/`` that the first ``engine serve`` generates (mode 0600). Replicas
behind a load balancer must share the values: set the variables, or share the files.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from engine.server.errors import CredentialError

__all__ = [
    "ADMIN_TOKEN_FILE",
    "ENROLLMENT_SECRET_FILE",
    "ENV_ADMIN_TOKEN",
    "ENV_ENROLLMENT_SECRET",
    "ENV_METRICS_TOKEN",
    "METRICS_TOKEN_FILE",
    "Credential",
    "hash_token",
    "load_credential",
    "new_token",
]

ENV_ADMIN_TOKEN = "ENGINE_ADMIN_TOKEN"
ENV_ENROLLMENT_SECRET = "ENGINE_ENROLLMENT_SECRET"
ENV_METRICS_TOKEN = "ENGINE_METRICS_TOKEN"
ADMIN_TOKEN_FILE = Path(".engine") / "admin.token"
ENROLLMENT_SECRET_FILE = Path(".engine") / "enrollment.secret"
METRICS_TOKEN_FILE = Path(".engine") / "metrics.token"


@dataclass(frozen=True)
class Credential:
    """A secret value and where it came from (``path`` None: the environment)."""

    value: str
    path: Path | None
    created: bool = False

    @property
    def origin(self) -> str:
        """Where the value came from, for messages (never the value itself)."""
        return str(self.path) if self.path is not None else "the environment"


def new_token() -> str:
    """A fresh random token: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The sha256 hex digest under which a token is stored (the token itself never is)."""
    return hashlib.sha256(token.encode()).hexdigest()


def load_credential(root: Path, env_var: str, relative: Path, *, create: bool = True) -> Credential:
    """Read a credential from ``env_var`` or ``root/relative``, generating the file if absent.

    The generated file holds a new random token and has mode 0600. Raises
    CredentialError when the file cannot be read or written, or is empty.
    """
    value = os.environ.get(env_var, "").strip()
    if value:
        return Credential(value, None)
    path = (root / relative).absolute()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        text = None
    except OSError as e:
        raise CredentialError(f"{path}: cannot read: {e.strerror}") from e
    if text is not None:
        if not text:
            raise CredentialError(
                f"{path}: is empty; delete it to have a new value generated, or set ${env_var}"
            )
        return Credential(text, path)
    if not create:
        raise CredentialError(f"{path}: does not exist and ${env_var} is not set")
    value = new_token()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() refuses an existing target: the first of concurrent servers wins.
        os.link(tmp, path)
    except FileExistsError:
        return load_credential(root, env_var, relative, create=False)
    except OSError as e:
        raise CredentialError(f"{path}: cannot create: {e.strerror}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return Credential(value, path, created=True)

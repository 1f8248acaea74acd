"""Pull mode's small parts: backoff and poll timing, the token file, the enrollment secret."""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from agent_runtime._fsutil import fsync_dir
from agent_runtime.config import DeviceConfig
from agent_runtime.errors import ConfigError

__all__ = [
    "SECRET_ENV",
    "Backoff",
    "EnrollmentProof",
    "TokenFile",
    "bounded_poll_interval",
    "enrollment_proof",
    "enrollment_secret",
    "poll_delay",
]

#: Environment variable holding the enrollment secret when the config names none.
SECRET_ENV = "AGENT_RUNTIME_ENROLLMENT_SECRET"


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th failure waits uniform(0, min(cap, base·2ⁿ⁻¹)).

    A server's Retry-After is a floor: the wait is never shorter than it asks.
    """

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def failed(self, retry_after: float | None = None) -> float:
        """Count a failure; seconds to wait before the next try."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 60))
        delay = self.rng.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def succeeded(self) -> None:
        """The server answered: start from the base again next time."""
        self.failures = 0


def bounded_poll_interval(value: float, low: float, high: float) -> tuple[float, str | None]:
    """The server's poll interval within ``[low, high]`` seconds, and a note saying what was
    changed when it was not (0 or negative -> low, NaN -> low, infinite or huge -> high)."""
    if low <= value <= high:  # False for NaN
        return value, None
    bounded = high if value > high else low
    return bounded, (
        f"the server asked for a poll interval of {value!r} s: using {bounded:g} s "
        f"(converge.poll_interval_min {low:g} s .. poll_interval_max {high:g} s)"
    )


def poll_delay(poll_interval: float, jitter: float, rng: random.Random) -> float:
    """Seconds until the next check-in: the server's interval plus up to 10 % more (at most
    ``jitter``), so that devices started together drift apart."""
    spread = min(jitter, 0.1 * poll_interval)
    if not (math.isfinite(poll_interval) and math.isfinite(spread)):
        raise ValueError(f"poll interval {poll_interval!r} is not a finite number of seconds")
    return max(poll_interval, 0.0) + rng.uniform(0, max(spread, 0.0))


# -- the token ------------------------------------------------------------------------------


class TokenFile:
    """The device token on disk: one line, mode 0600, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> str | None:
        """The token, or None when there is no (non-empty) token file."""
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot read the device token: {e}") from e
        return token or None

    def save(self, token: str) -> None:
        """Write the token readable by the owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(self.path.parent)

    def drop(self) -> None:
        """Forget the token (the server no longer accepts it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def enrollment_secret(config: DeviceConfig) -> str | None:
    """The enrollment secret: from the config's file, the config, or ``$AGENT_RUNTIME_...``."""
    settings = config.server
    if settings is None:
        return None
    if settings.enrollment_secret_file is not None:
        try:
            return settings.enrollment_secret_file.read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise ConfigError(
                f"{settings.enrollment_secret_file}: cannot read the enrollment secret: {e}"
            ) from e
    return settings.enrollment_secret or os.environ.get(SECRET_ENV) or None


@dataclass(frozen=True)
class EnrollmentProof:
    """What the device shows to enroll: its invite code, or else the fleet secret."""

    invite_code: str | None = None
    secret: str | None = None
    #: the file the invite code came from (deleted once the code was used)
    code_file: Path | None = None

    def used(self) -> None:
        """Forget a redeemed invite code: it works once, so its file is removed."""
        if self.code_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.code_file.unlink()


def enrollment_proof(config: DeviceConfig) -> EnrollmentProof | None:
    """The invite code (``enrollment_code_file``, ``enrollment_code``) when configured and
    present, else the enrollment secret; None when there is neither."""
    settings = config.server
    if settings is None:
        return None
    if settings.enrollment_code_file is not None:
        try:
            code = settings.enrollment_code_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            code = ""  # used and deleted: a token must exist, or the secret may still work
        except OSError as e:
            raise ConfigError(
                f"{settings.enrollment_code_file}: cannot read the invite code: {e}"
            ) from e
        if code:
            return EnrollmentProof(invite_code=code, code_file=settings.enrollment_code_file)
    if settings.enrollment_code:
        return EnrollmentProof(invite_code=settings.enrollment_code)
    secret = enrollment_secret(config)
    return EnrollmentProof(secret=secret) if secret is not None else None

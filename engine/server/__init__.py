"""`engine serve`: the HTTP server for devices (check-in, events, heartbeats, releases),
operators (devices, rollouts, status) and the endpoints agents in the field call."""

from engine.server.app import create_app
from engine.server.credentials import (
    ADMIN_TOKEN_FILE,
    ENROLLMENT_SECRET_FILE,
    ENV_ADMIN_TOKEN,
    ENV_ENROLLMENT_SECRET,
    Credential,
    hash_token,
    load_credential,
)
from engine.server.errors import CredentialError, ServerError
from engine.server.settings import MAX_BODY_BYTES, Offer, OfferFunction, ServerSettings
from engine.server.state import ServerState
from fleetbase.clock import utc_now

__all__ = [
    "ADMIN_TOKEN_FILE",
    "ENROLLMENT_SECRET_FILE",
    "ENV_ADMIN_TOKEN",
    "ENV_ENROLLMENT_SECRET",
    "MAX_BODY_BYTES",
    "Credential",
    "CredentialError",
    "Offer",
    "OfferFunction",
    "ServerError",
    "ServerSettings",
    "ServerState",
    "create_app",
    "hash_token",
    "load_credential",
    "utc_now",
]

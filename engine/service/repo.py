"""Load the operator repo and open the store it names."""

from __future__ import annotations

from pathlib import Path

from engine.store import Store, resolve_state_url
from inventory.loader import OperatorRepo, load_operator_repo

__all__ = ["load_repo", "open_store", "store_url"]


def load_repo(root: Path) -> OperatorRepo:
    """The validated operator repo at ``root``; raises InventoryError listing every problem."""
    return load_operator_repo(root)


def store_url(repo: OperatorRepo, state: str | None = None) -> str:
    """The store URL for ``repo``: ``state``, else $ENGINE_STATE_URL, engine.yaml, the default."""
    return resolve_state_url(repo.root, state, repo.settings.state)


def open_store(repo: OperatorRepo, state: str | None = None) -> Store:
    """Open (and migrate) the store of ``repo`` (see ``store_url``); raises StoreError."""
    return Store.open(store_url(repo, state))

"""Planner, rollout controller, store, HTTP server and the `engine` CLI."""

__all__: list[str] = []

"""The engine's use cases, shared by the CLI, the server and the tests.

Commands under ``engine/commands/`` parse arguments, call these functions and
print; nothing else imports a command module. The functions take loaded
inputs (an ``OperatorRepo``, an open ``Store``) or a path, raise the package
errors (``InventoryError``, ``EngineError``, ``ValueError`` for a bad filter)
and print nothing.

- ``engine.service.repo``: load the operator repo, resolve and open its store.
- ``engine.service.plan``: make a plan (``make_plan``, ``plan_repo``).
- ``engine.service.apply``: refuse a stale saved plan, count what moves,
  record the rollouts, follow them.
- ``engine.service.status``: the fleet's rollouts and versions.
- ``engine.service.forensics``: one device (report, heartbeat, event timeline)
  and a rollout's devices by state with their last step.
- ``engine.service.forensics``: one device (report, heartbeat, timeline) and a
  rollout's devices with their last step.

Import the submodule you need: this package imports none of them, so that a
command pays only for what it uses (the CLI loads every command at start-up).
"""

__all__ = ["apply", "forensics", "plan", "repo", "status"]

"""How this release behaves: good, exit_at_start or no_heartbeat (see build_releases.py)."""

BEHAVIOUR = "leak_memory"

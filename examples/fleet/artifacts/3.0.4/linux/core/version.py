"""The release this copy of the agent is; rewritten by examples/build_releases.py."""

VERSION = "3.0.4"

"""On-device agent runtime: converge loop, crash-safe transactions, rollback to known-good."""

__all__: list[str] = []

"""Tests of the on-device runtime: transaction, trust, download, layouts, kill matrix."""

"""The example agent's modules (the field layout keeps them under core/)."""

"""engine release new and engine release list."""

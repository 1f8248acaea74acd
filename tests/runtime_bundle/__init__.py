"""Runtime bundles: building, verifying, installing offline, serving."""

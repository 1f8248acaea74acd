"""Property tests (hypothesis): path validation, versions, HTTP Range."""

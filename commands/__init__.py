"""One function per CLI command; each takes read-only Settings and returns (result, report text)."""

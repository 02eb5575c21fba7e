"""Shared helpers: user-facing errors, atomic file output, run metadata, devices and seeds."""

"""Architectures, checkpoint I/O, the single training loop, and the victim oracle."""

"""Proof-of-work: calibration of puzzle time from privacy cost, and PoW columns for logs."""

"""Benchmarks: every speed and memory goal, measured beside the peers in one run."""

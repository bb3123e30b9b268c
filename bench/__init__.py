"""Benchmarks: each prints its figures and saves them to bench/results/<name>.json."""

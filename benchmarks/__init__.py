"""Benchmarks (not tests): `python benchmarks/bench.py --help`."""

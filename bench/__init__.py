"""Benchmarks of the source tree (run from a checkout: `python -m bench.decoding`)."""

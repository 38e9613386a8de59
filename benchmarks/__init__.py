"""Microbenchmarks of the verification ops (run: python -m benchmarks.kernels)."""

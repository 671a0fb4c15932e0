"""Benchmarks of the pipeline: training throughput, deployment speed, pipeline overhead, memory.

Run from the repository root: `python -m bench` (see bench/README.md and `python -m bench --help`).
Benchmarks print and record numbers; the tests only check that the code runs (tests/test_bench.py).
"""

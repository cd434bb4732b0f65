"""Benchmarks (`make bench` = `python -m bench`): every bench/bench_*.py module with a `main() -> int`."""

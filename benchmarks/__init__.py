"""autoprune's benchmark suite: `make bench` / `make bench-quick` (see benchmarks/suite.py)."""

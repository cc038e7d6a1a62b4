"""asv benchmarks of logitcore; see docs/benchmarks.md for how to run them."""

"""Benchmarks: each figure is compared with a raw baseline measured in the same run."""

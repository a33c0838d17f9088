"""Benchmarks: scenario definitions (scenarios.yaml), cache scenarios and the asv suite."""

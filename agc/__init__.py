"""AGC benchmarking harness: the IRIS-HEP Analysis Grand Challenge CMS ttbar analysis,
run faithfully on pluggable backends, with measured throughput and latency."""

__version__ = "0.1.0"

"""benchmarks: latency and throughput, per stage and end to end."""

"""Benchmark: hoofhearted side by side with node_exporter and process-exporter (`make bench`)."""

"""hoofhearted: a Prometheus exporter that answers "why is my server's fan running?"."""

__version__ = "0.1.0"

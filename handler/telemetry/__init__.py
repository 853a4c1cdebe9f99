"""What the container tells about each model: request capture and per-model metrics (docs/observability.md)."""

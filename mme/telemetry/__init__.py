"""What `mme` reads of the container's observability: captured requests (`mme capture read`) and per-model figures
(`mme top`). The names both sides share are in `handler.telemetry.names`."""

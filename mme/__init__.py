"""The `mme` tooling: demo models, model archives, and the local container and endpoint."""

"""A running ``mme serve`` (the real CLI, as a child process) and boto3 clients pointed at it."""

from serving_fixtures import moto_s3, serve, store

__all__ = ["moto_s3", "serve", "store"]

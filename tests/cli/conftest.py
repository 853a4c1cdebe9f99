"""Fixtures shared by the CLI's tests."""

from moto_store import s3

__all__ = ["s3"]

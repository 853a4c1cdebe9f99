"""Faults, bad input and load against a running ``mme serve`` (``make reliability`` runs this folder in full, with
the soak; ``make test`` runs everything here but the tests marked ``soak``)."""

from serving_fixtures import moto_s3, serve, store

__all__ = ["moto_s3", "serve", "store"]

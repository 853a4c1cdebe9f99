"""Where model archives live: a local folder or an S3 prefix, addressed like SageMaker's ``TargetModel``.

A ``TargetModel`` is a key relative to the store's prefix. Both stores answer :meth:`ModelStore.stat` (does the
key exist, how big, which version) and :meth:`ModelStore.download`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlparse

from mme import MmeError


class StoreError(MmeError, ValueError):
    """The store or a key cannot be used; the message says what is wrong."""


class ModelNotFoundError(StoreError):
    """No archive exists under the key."""


@dataclass(frozen=True)
class ArchiveInfo:
    """What the store says about one archive: its size and a version tag that changes when it is rewritten."""

    key: str
    size: int
    version: str


class ModelStore(Protocol):
    """A place holding model archives under a prefix."""

    uri: str

    def stat(self, key: str) -> ArchiveInfo:
        """Size and version of ``key``. Raises :class:`ModelNotFoundError` when it does not exist."""
        ...

    def download(self, key: str, destination: Path) -> None:
        """Copy ``key`` to the file ``destination``."""
        ...


#: SageMaker's limit on InvokeEndpoint's TargetModel (API reference, InvokeEndpoint).
MAX_TARGET_MODEL_LENGTH = 1024


def validate_key(key: str) -> str:
    """Check that ``key`` is a relative key that stays under the prefix, as SageMaker would accept it.

    Raises:
        StoreError: the key is empty, longer than SageMaker's 1024 characters, holds a control character, is
            absolute, or climbs out with ``..``.
    """
    if not key or not key.strip():
        raise StoreError("TargetModel is empty")
    if len(key) > MAX_TARGET_MODEL_LENGTH:
        raise StoreError(
            f"TargetModel is {len(key)} characters long; SageMaker allows at most {MAX_TARGET_MODEL_LENGTH}"
        )
    if any(not character.isprintable() for character in key):
        raise StoreError(f"TargetModel {key[:80]!r} holds a control character")
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or "\\" in key:
        raise StoreError(f"TargetModel {key!r} must be a key relative to the model prefix, without '..'")
    return key


class LocalStore:
    """Archives in a folder on this machine."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise StoreError(f"the store folder {root} does not exist")
        self.root = root.resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def stat(self, key: str) -> ArchiveInfo:
        path = self._path(key)
        if PurePosixPath(key).as_posix() != key:
            # A path would find "a.tar.gz" for "a.tar.gz/", "./a.tar.gz" or "x//a.tar.gz"; S3 holds no such keys.
            raise ModelNotFoundError(f"could not find model data for {key[:80]!r}: no archive has that exact key")
        try:
            found = path.is_file()
        except OSError as error:  # e.g. a segment longer than a file name may be: no such archive can exist
            raise ModelNotFoundError(f"could not find model data for {key[:80]!r}: {error.strerror}") from None
        if not found:
            raise ModelNotFoundError(f"could not find model data at {path}")
        status = path.stat()
        return ArchiveInfo(key=key, size=status.st_size, version=f"{status.st_mtime_ns}-{status.st_size}")

    def download(self, key: str, destination: Path) -> None:
        shutil.copyfile(self._path(key), destination)


class S3Store:
    """Archives under an ``s3://bucket/prefix/``; boto3 honours ``AWS_ENDPOINT_URL`` (a moto server in tests)."""

    def __init__(self, uri: str) -> None:
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StoreError(f"{uri!r} is not an s3://bucket/prefix/ URI")
        self.uri = uri
        self.bucket = parsed.netloc
        prefix = parsed.path.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        # botocore's standard retry mode backs off on throttling and transient errors.
        self._s3 = boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))

    def stat(self, key: str) -> ArchiveInfo:
        from botocore.exceptions import ClientError

        full_key = self.prefix + validate_key(key)
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"404", "NoSuchKey", "NotFound"}:
                raise ModelNotFoundError(f"could not find model data at s3://{self.bucket}/{full_key}") from None
            raise StoreError(f"cannot read s3://{self.bucket}/{full_key}: {error}") from None
        return ArchiveInfo(key=key, size=int(head["ContentLength"]), version=str(head.get("ETag", "")).strip('"'))

    def download(self, key: str, destination: Path) -> None:
        self._s3.download_file(self.bucket, self.prefix + validate_key(key), str(destination))


def open_store(location: str) -> ModelStore:
    """A store for a local folder or an ``s3://`` URI.

    Raises:
        StoreError: the folder does not exist or the URI is malformed.
    """
    if location.startswith("s3://"):
        return S3Store(location)
    return LocalStore(Path(os.path.expanduser(location)))

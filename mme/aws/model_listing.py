"""The archives under a model prefix, as TargetModel values with their sizes and dates (what `mme models` shows).

An archive is an object (or, in a local store, a file) whose name ends in ``.tar.gz``; anything else under the prefix
is not listed. The local endpoint lists its own store the same way and adds which archives it has loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mme.archive import ARCHIVE_SUFFIX
from mme.aws.model_prefix import ModelPrefix, s3_client, s3_errors
from mme.store import LocalStore, ModelStore, S3Store, StoreError


@dataclass(frozen=True, kw_only=True)
class StoredModel:
    """One archive a model store holds, as a `target_model` (its key relative to the prefix).

    `size` and `last_modified` are None for a model an endpoint has loaded but the store no longer holds; `loaded` is
    None when unknown (a store listing knows nothing about endpoints).
    """

    target_model: str
    size: int | None
    last_modified: datetime | None
    loaded: bool | None = None


def list_prefix(s3: Any, location: ModelPrefix) -> list[StoredModel]:
    """The archives under `location`, sorted by TargetModel (ListObjectsV2, every page).

    Raises:
        BucketNotFoundError, AccessDeniedError, CredentialsError: S3 refused (see `mme.aws.model_prefix`).
    """
    models = []
    with s3_errors(location):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.prefix):
            for item in page.get("Contents", []):
                target_model = str(item["Key"])[len(location.prefix) :]
                if target_model.endswith(ARCHIVE_SUFFIX):
                    models.append(
                        StoredModel(
                            target_model=target_model,
                            size=int(item["Size"]),
                            last_modified=item["LastModified"].astimezone(UTC),
                        )
                    )
    return sorted(models, key=lambda model: model.target_model)


def list_folder(root: Path) -> list[StoredModel]:
    """The archives in the folder `root` and its subfolders (symlinked folders are not followed), sorted."""
    models = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if name.endswith(ARCHIVE_SUFFIX) and path.is_file():
                status = path.stat()
                models.append(
                    StoredModel(
                        target_model=path.relative_to(root).as_posix(),
                        size=status.st_size,
                        last_modified=datetime.fromtimestamp(status.st_mtime, UTC),
                    )
                )
    return sorted(models, key=lambda model: model.target_model)


def list_store(store: ModelStore) -> list[StoredModel]:
    """The archives of a local endpoint's store (a folder, or an S3 prefix read with the default AWS configuration,
    which honours ``AWS_ENDPOINT_URL``).

    Raises:
        StoreError: the store is of a kind this does not know.
        BucketNotFoundError, AccessDeniedError, CredentialsError: S3 refused.
    """
    # ModelStore has no listing of its own yet: the two stores are told apart here.
    if isinstance(store, LocalStore):
        return list_folder(store.root)
    if isinstance(store, S3Store):
        import boto3

        return list_prefix(s3_client(boto3.session.Session()), ModelPrefix.of(store.bucket, store.prefix))
    raise StoreError(f"cannot list the models of {store.uri}")

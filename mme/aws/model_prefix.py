"""Where a stage's model archives live (a bucket and a key prefix), an S3 client for it, and S3's refusals in words.

`mme upload` and `mme models` work on a `ModelPrefix`, found from a stage's SSM parameters or given as
`--bucket`/`--prefix`. A `TargetModel` is a key relative to the prefix (README, "How TargetModel maps to keys").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from mme import MmeError

#: The IAM action each S3 operation we call needs, so an access-denied message names what to ask for.
PERMISSIONS = {
    "HeadBucket": "s3:ListBucket",
    "HeadObject": "s3:GetObject (and s3:ListBucket, without which S3 answers 403 for a missing key)",
    "GetObject": "s3:GetObject, and kms:Decrypt on the bucket's KMS key",
    "ListObjectsV2": "s3:ListBucket",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListParts": "s3:ListMultipartUploadParts",
    "PutObject": "s3:PutObject, and kms:GenerateDataKey on the bucket's KMS key",
    "CreateMultipartUpload": "s3:PutObject, and kms:GenerateDataKey on the bucket's KMS key",
    "UploadPart": "s3:PutObject, and kms:GenerateDataKey on the bucket's KMS key",
    "CompleteMultipartUpload": "s3:PutObject, and kms:Decrypt on the bucket's KMS key",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "DeleteObject": "s3:DeleteObject",
}
_MISSING_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "KMS.AccessDeniedException"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


class BucketNotFoundError(MmeError):
    """The bucket does not exist (or not where the client looked)."""


class AccessDeniedError(MmeError):
    """S3 refused an operation to these credentials; the message names the permission to ask for."""


class CredentialsError(MmeError):
    """No AWS credentials, or ones S3 does not accept."""


@dataclass(frozen=True)
class ModelPrefix:
    """Archives under ``s3://bucket/prefix``; `prefix` is "" (the bucket's root) or ends with "/"."""

    bucket: str
    prefix: str

    @classmethod
    def of(cls, bucket: str, prefix: str) -> ModelPrefix:
        """The prefix with its trailing "/" added ("models" and "models/" name the same folder).

        Raises:
            ValueError: the bucket is empty, or the prefix starts with "/" or holds "..".
        """
        if not bucket.strip():
            raise ValueError("the bucket name is empty")
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"{prefix!r} must be a key prefix such as models/ (no leading '/', no '..')")
        return cls(bucket=bucket, prefix=prefix if not prefix or prefix.endswith("/") else prefix + "/")

    def key(self, target_model: str) -> str:
        """The object key SageMaker loads for `target_model`."""
        return self.prefix + target_model

    def uri(self, target_model: str = "") -> str:
        """``s3://bucket/prefix<target_model>``."""
        return f"s3://{self.bucket}/{self.key(target_model)}"


def s3_client(session: Any) -> Any:
    """An S3 client of the boto3 `session`, with botocore's standard retries (backoff on throttling and transient
    errors); honours ``AWS_ENDPOINT_URL``.

    Raises:
        CredentialsError: the session finds no credentials (checked here, before any request, to say how to fix it).
    """
    from botocore.config import Config

    if session.get_credentials() is None:
        raise CredentialsError(
            "no AWS credentials found: run `aws configure` or `aws sso login`, or set AWS_PROFILE (or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    return session.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 5}))


def error_code(error: ClientError) -> str:
    """S3's error code (for a HEAD, which has no body, the HTTP status as a string)."""
    return str(error.response.get("Error", {}).get("Code", ""))


def worded(error: ClientError, location: ModelPrefix, target_model: str | None = None) -> MmeError | None:
    """The `MmeError` for a missing bucket, a refusal or bad credentials, naming what to fix; None for others."""
    code = error_code(error)
    operation = error.operation_name
    where = location.uri(target_model or "")
    if code in _MISSING_BUCKET or (code in {"404", "NotFound"} and operation == "HeadBucket"):
        return BucketNotFoundError(
            f"bucket {location.bucket} does not exist (or not in this account): check --bucket, or --stage, "
            "--owner and --region"
        )
    if code in _DENIED:
        permission = PERMISSIONS.get(operation, f"the permission for {operation}")
        return AccessDeniedError(
            f"access denied: {operation} on {where}. Your AWS identity needs {permission} there; check AWS_PROFILE "
            "or ask for the permission"
        )
    if code in _BAD_CREDENTIALS:
        return CredentialsError(
            f"S3 does not accept your AWS credentials ({code}): refresh them (`aws sso login`, or new keys) or check "
            "AWS_PROFILE"
        )
    return None


@contextmanager
def s3_errors(location: ModelPrefix, target_model: str | None = None) -> Iterator[None]:
    """Turn S3's answers that `worded` knows into `MmeError`s; let every other error propagate unchanged."""
    try:
        yield
    except ClientError as error:
        mme_error = worded(error, location, target_model)
        if mme_error is None:
            raise
        raise mme_error from error

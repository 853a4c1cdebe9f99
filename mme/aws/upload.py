"""Upload a model archive under a model prefix: never over an existing key, resumable, checksummed end to end.

Artifacts are immutable (an endpoint that loaded a key keeps serving its copy), so an existing key is refused twice:
first with HeadObject, for a message naming the object, then by the write itself (``IfNoneMatch="*"`` on PutObject
and CompleteMultipartUpload), so a concurrent upload cannot be overwritten either.

Archives smaller than `MULTIPART_THRESHOLD` go up in one PutObject; larger ones as a multipart upload of `PART_SIZE`
parts. An interrupted multipart upload stays open in S3 (the model store's lifecycle rule aborts it after 7 days).
The next upload of the same file to the same key finds it (ListMultipartUploads, ListParts), keeps the parts whose
size and checksum match the local file, and sends only the others. An open upload whose parts do not match is
another file's: it is aborted and the upload starts over.

Checksums: each part and each PutObject carries the SHA-256 computed here, which S3 checks on receipt (BadDigest).
After completion, the object's checksum as S3 reports it is compared with the one computed from the local file. For a
multipart upload that is the SHA-256 of the parts' SHA-256s, with a ``-<parts>`` suffix. ETags are never compared:
with SSE-KMS (the model store's encryption) they are not MD5s.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from rich.filesize import decimal

from mme import MmeError
from mme.archive import ARCHIVE_SUFFIX, ArchiveError
from mme.aws.model_prefix import ModelPrefix, error_code, s3_errors, worded
from mme.store import StoreError, validate_key

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Archives of at least this many bytes go up as a (resumable) multipart upload; smaller ones in one PutObject.
MULTIPART_THRESHOLD = 64 * MIB
#: Bytes per part (the last may be smaller). S3 wants at least 5 MiB. Read at call time, so tests can lower both.
PART_SIZE = 16 * MIB
#: S3's most parts per upload; a larger file gets larger parts.
MAX_PARTS = 10_000
CONTENT_TYPE = "application/gzip"
#: S3's answers when a body does not match the checksum sent with it, or a part listed does not match its upload.
_CHECKSUM_REFUSALS = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidPart", "InvalidPartOrder"}
#: S3's answers to a conditional write whose condition (no such key) failed, or raced another conditional write.
_KEY_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class UploadError(MmeError):
    """An upload did not complete; the message says what happened and what to run next."""


class ArchiveExistsError(UploadError):
    """The key already holds an archive; a new version needs a new key."""


class UploadInterruptedError(UploadError):
    """The upload stopped; the parts sent so far stay in S3, and the same command resumes it."""


class ChecksumMismatchError(UploadError):
    """What S3 holds is not what was read here; nothing is left under the key."""


class ArchiveChangedError(UploadError):
    """The local file changed after it was validated; nothing is left under the key."""


@dataclass(frozen=True, kw_only=True)
class UploadPlan:
    """An archive checked to exist locally and not yet under its key; `fingerprint` is its (size, mtime) when checked,
    so the file sent is the file validated."""

    archive: Path
    destination: ModelPrefix
    target_model: str
    size: int
    fingerprint: tuple[int, int]

    @property
    def key(self) -> str:
        """The object key."""
        return self.destination.key(self.target_model)

    @property
    def multipart(self) -> bool:
        """Whether it goes up as a multipart upload."""
        return self.size >= MULTIPART_THRESHOLD


@dataclass(frozen=True, kw_only=True)
class UploadStart:
    """What an upload is about to send: `reused_parts` (and their bytes) were found in S3 from an interrupted run."""

    total_bytes: int
    parts: int
    reused_parts: int = 0
    reused_bytes: int = 0
    #: An open upload of another file to this key was found and aborted.
    aborted_stale_upload: bool = False


@dataclass(frozen=True, kw_only=True)
class UploadResult:
    """The archive as S3 holds it, verified: `sha256` is S3's checksum, equal to the local file's."""

    uri: str
    target_model: str
    size: int
    sha256: str
    parts: int
    reused_parts: int
    version_id: str | None


class UploadProgress(Protocol):
    """Told what an upload sends, as it sends it (the CLI draws a progress bar)."""

    def started(self, start: UploadStart) -> None:
        """The upload begins; `start.reused_bytes` are already in S3."""

    def sent(self, size: int) -> None:
        """`size` more bytes are in S3."""


@dataclass(frozen=True)
class _Part:
    number: int
    offset: int
    length: int


def next_version_key(target_model: str) -> str:
    """A key for the next version: ``x.tar.gz`` -> ``x-v2.tar.gz``, ``x-v3.tar.gz`` -> ``x-v4.tar.gz``."""
    stem = target_model.removesuffix(ARCHIVE_SUFFIX)
    match = re.fullmatch(r"(.*)-v(\d+)", stem)
    if match:
        return f"{match[1]}-v{int(match[2]) + 1}{ARCHIVE_SUFFIX}"
    return f"{stem}-v2{ARCHIVE_SUFFIX}"


def _fingerprint(archive: Path) -> tuple[int, int]:
    status = archive.stat()
    return status.st_size, status.st_mtime_ns


def _head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return dict(s3.head_object(Bucket=bucket, Key=key))
    except ClientError as error:
        if error_code(error) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def _exists_error(destination: ModelPrefix, target_model: str, head: dict[str, Any] | None) -> UploadError:
    key = destination.key(target_model)
    advice = f"upload the new version under a new key, e.g. --key {next_version_key(target_model)}"
    if head is None:  # a conditional write raced another one that has not finished
        return ArchiveExistsError(f"another upload to {key} in bucket {destination.bucket} is under way; {advice}")
    uploaded: datetime = head["LastModified"]
    return ArchiveExistsError(
        f"{key} already exists in bucket {destination.bucket} (uploaded {uploaded:%Y-%m-%d %H:%M %Z}, "
        f"{decimal(int(head['ContentLength']))}); {advice}"
    )


def plan_upload(s3: Any, archive: Path, destination: ModelPrefix, target_model: str | None = None) -> UploadPlan:
    """Check that `archive` is a local ``.tar.gz`` file and that nothing is stored under its key yet.

    `target_model` (default: the archive's file name) is the key relative to the prefix. Reads only: HeadBucket and
    HeadObject.

    Raises:
        ArchiveError: the file is missing, a folder, or not named ``<model>.tar.gz``.
        StoreError: `target_model` is not a relative ``.tar.gz`` key.
        ArchiveExistsError: the key holds an object already (its date and size, and a new key, in the message).
        BucketNotFoundError, AccessDeniedError, CredentialsError: S3 refused (see `mme.aws.model_prefix`).
    """
    if not archive.exists():
        raise ArchiveError(f"{archive} does not exist")
    if archive.is_dir():
        raise ArchiveError(f"{archive} is a folder: upload an archive (`mme package ... -o NAME.tar.gz` builds one)")
    if not archive.name.endswith(ARCHIVE_SUFFIX) or archive.name == ARCHIVE_SUFFIX:
        raise ArchiveError(f"{archive} is not a <model>{ARCHIVE_SUFFIX} archive (`mme package` builds one)")
    target = target_model if target_model is not None else archive.name
    validate_key(target)
    if not target.endswith(ARCHIVE_SUFFIX) or target.rsplit("/", 1)[-1] == ARCHIVE_SUFFIX:
        raise StoreError(f"--key {target!r} must name a <model>{ARCHIVE_SUFFIX} archive, e.g. sentiment-v2.tar.gz")
    with s3_errors(destination, target):
        s3.head_bucket(Bucket=destination.bucket)
        head = _head(s3, destination.bucket, destination.key(target))
    if head is not None:
        raise _exists_error(destination, target, head)
    size, mtime = _fingerprint(archive)
    return UploadPlan(
        archive=archive, destination=destination, target_model=target, size=size, fingerprint=(size, mtime)
    )


def upload_archive(s3: Any, plan: UploadPlan, progress: UploadProgress) -> UploadResult:
    """Send the planned archive and verify S3's checksum of it against the local file's.

    Raises:
        ArchiveExistsError: the key was taken meanwhile (the conditional write refused); nothing of this upload stays.
        UploadInterruptedError: the network or S3 failed mid-upload; the parts sent stay, and the same call resumes.
        ChecksumMismatchError: S3 received other bytes than were read here; the upload or object is removed.
        ArchiveChangedError: the local file changed since `plan_upload`; the upload is aborted.
        BucketNotFoundError, AccessDeniedError, CredentialsError: S3 refused (see `mme.aws.model_prefix`).
    """
    with s3_errors(plan.destination, plan.target_model):
        if plan.multipart:
            return _multipart_upload(s3, plan, progress)
        return _single_upload(s3, plan, progress)


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def composite_sha256(part_checksums: list[str]) -> str:
    """S3's checksum of a multipart object: the SHA-256 of its parts' SHA-256s, with the number of parts appended."""
    joined = b"".join(base64.b64decode(checksum) for checksum in part_checksums)
    return f"{_sha256(joined)}-{len(part_checksums)}"


def _same_checksum(reported: str | None, expected: str) -> bool:
    """S3 reports a multipart object's checksum as ``<sha>-<parts>``; moto 5.2.5 leaves the suffix off."""
    if reported is None:
        return False
    digest, _, parts = expected.partition("-")
    return reported == expected or (bool(parts) and reported == digest)


def _check_unchanged(plan: UploadPlan) -> None:
    if _fingerprint(plan.archive) != plan.fingerprint:
        raise ArchiveChangedError(
            f"{plan.archive} changed after it was validated; nothing was stored under {plan.key}: run the command "
            "again to validate and upload the new file"
        )


def _read(plan: UploadPlan, part: _Part) -> bytes:
    with plan.archive.open("rb") as file:
        file.seek(part.offset)
        data = file.read(part.length)
    if len(data) != part.length:
        raise ArchiveChangedError(f"{plan.archive} became shorter while it was being uploaded: run the command again")
    return data


def _taken(s3: Any, plan: UploadPlan) -> UploadError:
    head = _head(s3, plan.destination.bucket, plan.key)
    return _exists_error(plan.destination, plan.target_model, head)


def _version_id(answer: dict[str, Any]) -> str | None:
    """The new object's version; "null" is none (a bucket without versioning, as moto answers a multipart upload)."""
    version_id = answer.get("VersionId")
    return str(version_id) if version_id and version_id != "null" else None


def _verify(s3: Any, plan: UploadPlan, expected: str, version_id: str | None) -> str:
    """S3's checksum of the new object, once it equals `expected`; otherwise the object is deleted."""
    options = {"VersionId": version_id} if version_id else {}
    head = s3.head_object(Bucket=plan.destination.bucket, Key=plan.key, ChecksumMode="ENABLED", **options)
    reported = head.get("ChecksumSHA256")
    if int(head["ContentLength"]) == plan.size and _same_checksum(reported, expected):
        return str(reported)
    # The key is new (the write was conditional), so nothing but this upload's copy is removed.
    s3.delete_object(Bucket=plan.destination.bucket, Key=plan.key)
    raise ChecksumMismatchError(
        f"S3 holds {head['ContentLength']} bytes with SHA-256 {reported} under {plan.key}, but {plan.archive} has "
        f"{plan.size} bytes with SHA-256 {expected}; the object was deleted: run the command again"
    )


def _single_upload(s3: Any, plan: UploadPlan, progress: UploadProgress) -> UploadResult:
    data = plan.archive.read_bytes()
    _check_unchanged(plan)
    checksum = _sha256(data)
    progress.started(UploadStart(total_bytes=plan.size, parts=1))
    try:
        answer = s3.put_object(
            Bucket=plan.destination.bucket,
            Key=plan.key,
            Body=data,
            ContentType=CONTENT_TYPE,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            IfNoneMatch="*",
        )
    except ClientError as error:
        if error_code(error) in _KEY_TAKEN:
            raise _taken(s3, plan) from error
        if error_code(error) in _CHECKSUM_REFUSALS:
            raise ChecksumMismatchError(
                f"S3 refused {plan.key}: what arrived does not match the SHA-256 of {plan.archive} "
                f"({error_code(error)}); nothing was stored: run the command again"
            ) from error
        raise
    progress.sent(plan.size)
    version_id = _version_id(answer)
    verified = _verify(s3, plan, checksum, version_id)
    return UploadResult(
        uri=plan.destination.uri(plan.target_model),
        target_model=plan.target_model,
        size=plan.size,
        sha256=verified,
        parts=1,
        reused_parts=0,
        version_id=version_id,
    )


def _parts(size: int) -> list[_Part]:
    part_size = max(PART_SIZE, math.ceil(size / MAX_PARTS))
    return [
        _Part(number=index + 1, offset=offset, length=min(part_size, size - offset))
        for index, offset in enumerate(range(0, size, part_size))
    ]


def _abort(s3: Any, plan: UploadPlan, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=plan.destination.bucket, Key=plan.key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as error:  # cleanup on a failure path: report the failure, not this
        logger.warning("could not abort the upload %s of %s (the lifecycle rule will): %s", upload_id, plan.key, error)


def _reusable(plan: UploadPlan, listed: dict[str, Any], part: _Part | None) -> dict[str, Any] | None:
    """The completed-part entry for a part found in S3, if it holds this file's bytes; None if not."""
    if part is None or listed["Size"] != part.length:
        return None
    data = _read(plan, part)
    checksum = _sha256(data)
    if listed.get("ChecksumSHA256"):
        same = listed["ChecksumSHA256"] == checksum
    else:
        # S3 lists a part's SHA-256 for uploads created with one; moto 5.2.5 lists none. Then only an ETag equal to
        # the part's MD5 (S3 without KMS, moto) proves the same bytes; any other ETag means sending the part again.
        same = listed.get("ETag", "").strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
    return {"PartNumber": part.number, "ETag": listed["ETag"], "ChecksumSHA256": checksum} if same else None


def _open_upload(s3: Any, plan: UploadPlan, parts: list[_Part]) -> tuple[str | None, dict[int, dict[str, Any]], bool]:
    """The open upload of this file to this key, if any: (upload id, the parts to keep, whether a stale one was
    aborted)."""
    bucket = plan.destination.bucket
    uploads = [
        upload
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=plan.key)
        for upload in page.get("Uploads", [])
        if upload["Key"] == plan.key and upload.get("ChecksumAlgorithm") == "SHA256"
    ]
    if not uploads:
        return None, {}, False
    upload_id = str(uploads[-1]["UploadId"])  # S3 lists one key's uploads oldest first
    listed = [
        part
        for page in s3.get_paginator("list_parts").paginate(Bucket=bucket, Key=plan.key, UploadId=upload_id)
        for part in page.get("Parts", [])
    ]
    ours = {part.number: part for part in parts}
    kept: dict[int, dict[str, Any]] = {}
    for listed_part in listed:
        reusable = _reusable(plan, listed_part, ours.get(listed_part["PartNumber"]))
        if reusable is None:
            logger.info("the open upload %s of %s holds another file's part %s: aborting it", upload_id, plan.key,
                        listed_part["PartNumber"])  # fmt: skip
            _abort(s3, plan, upload_id)
            return None, {}, True
        kept[reusable["PartNumber"]] = reusable
    return upload_id, kept, False


def _interrupted(plan: UploadPlan, part: _Part, parts: int, error: Exception) -> UploadInterruptedError:
    return UploadInterruptedError(
        f"the upload of {plan.archive} stopped at part {part.number} of {parts}: {error}. The parts already sent stay "
        f"in S3 (for 7 days): run the same command again to resume"
    )


def _send_part(s3: Any, plan: UploadPlan, upload_id: str, part: _Part, parts: int) -> dict[str, Any]:
    data = _read(plan, part)
    checksum = _sha256(data)
    try:
        answer = s3.upload_part(
            Bucket=plan.destination.bucket,
            Key=plan.key,
            UploadId=upload_id,
            PartNumber=part.number,
            Body=data,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
    except ClientError as error:
        if error_code(error) in _CHECKSUM_REFUSALS:
            _abort(s3, plan, upload_id)
            raise ChecksumMismatchError(
                f"S3 refused part {part.number} of {plan.key}: what arrived does not match its SHA-256 "
                f"({error_code(error)}); the upload was aborted: run the command again"
            ) from error
        if worded(error, plan.destination, plan.target_model) is not None:
            raise
        raise _interrupted(plan, part, parts, error) from error
    except BotoCoreError as error:
        raise _interrupted(plan, part, parts, error) from error
    if answer.get("ChecksumSHA256", checksum) != checksum:
        _abort(s3, plan, upload_id)
        raise ChecksumMismatchError(
            f"S3 stored part {part.number} of {plan.key} with SHA-256 {answer['ChecksumSHA256']}, not {checksum}; "
            "the upload was aborted: run the command again"
        )
    return {"PartNumber": part.number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}


def _complete(s3: Any, plan: UploadPlan, upload_id: str, completed: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return dict(
            s3.complete_multipart_upload(
                Bucket=plan.destination.bucket,
                Key=plan.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
                IfNoneMatch="*",
            )
        )
    except ClientError as error:
        code = error_code(error)
        if code in _KEY_TAKEN:
            _abort(s3, plan, upload_id)
            raise _taken(s3, plan) from error
        if code in _CHECKSUM_REFUSALS:
            _abort(s3, plan, upload_id)
            raise ChecksumMismatchError(
                f"S3 refused to assemble {plan.key}: a part does not match its SHA-256 ({code}); the upload was "
                "aborted: run the command again"
            ) from error
        if code == "NoSuchUpload":
            raise UploadInterruptedError(
                f"the open upload of {plan.key} was aborted meanwhile (by another run or the bucket's lifecycle "
                "rule): run the command again to start over"
            ) from error
        raise


def _multipart_upload(s3: Any, plan: UploadPlan, progress: UploadProgress) -> UploadResult:
    parts = _parts(plan.size)
    upload_id, done, aborted = _open_upload(s3, plan, parts)
    if upload_id is None:
        upload_id = str(
            s3.create_multipart_upload(
                Bucket=plan.destination.bucket, Key=plan.key, ContentType=CONTENT_TYPE, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        )
    reused_bytes = sum(part.length for part in parts if part.number in done)
    progress.started(
        UploadStart(
            total_bytes=plan.size,
            parts=len(parts),
            reused_parts=len(done),
            reused_bytes=reused_bytes,
            aborted_stale_upload=aborted,
        )
    )
    reused_parts = len(done)
    for part in parts:
        if part.number not in done:
            done[part.number] = _send_part(s3, plan, upload_id, part, len(parts))
            progress.sent(part.length)
    try:
        _check_unchanged(plan)
    except ArchiveChangedError:
        _abort(s3, plan, upload_id)
        raise
    completed = [done[part.number] for part in parts]
    answer = _complete(s3, plan, upload_id, completed)
    version_id = _version_id(answer)
    expected = composite_sha256([part["ChecksumSHA256"] for part in completed])
    verified = _verify(s3, plan, expected, version_id)
    return UploadResult(
        uri=plan.destination.uri(plan.target_model),
        target_model=plan.target_model,
        size=plan.size,
        sha256=verified,
        parts=len(parts),
        reused_parts=reused_parts,
        version_id=version_id,
    )

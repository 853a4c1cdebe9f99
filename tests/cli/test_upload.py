"""`mme upload`: a validated archive lands under a new key, byte for byte, with S3's SHA-256 checked against the local
file; existing keys are never overwritten; an interrupted multipart upload resumes. S3, SSM and IAM are moto's."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from moto_store import BUCKET, REGION, moto_environment
from rich.filesize import decimal
from typer.testing import CliRunner

import mme.aws.upload as upload_module
from mme.archive import write_archive
from mme.cli import app

runner = CliRunner()
MIB = 1024 * 1024
#: A bucket without versioning or KMS, as `--bucket` may name.
PLAIN_BUCKET = "plain-models"
PREFIX = "models/"
#: S3's smallest part: the tests' part size and multipart threshold, so a 12 MiB archive goes up in 3 parts.
SMALL_PART = 5 * MIB


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 (and SSM, IAM, KMS) with an empty model bucket like the model store's (versioned, SSE-KMS) and an
    empty plain one; credentials and region from the environment."""
    moto_environment(monkeypatch, "MME_DEFAULT_TOKENIZER_DIR")
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        key_id = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
        client.put_bucket_encryption(
            Bucket=BUCKET,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        )
        client.create_bucket(Bucket=PLAIN_BUCKET)
        yield client


@pytest.fixture
def cli_s3_hooks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Callable[..., Any]]]:
    """(event, handler) pairs registered on every S3 client created from now on (the CLI's): botocore's own event
    hooks around moto's S3, to fail or race a call."""
    hooks: list[tuple[str, Callable[..., Any]]] = []
    original = boto3.session.Session.client

    def client(self: boto3.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
        made = original(self, service_name, *args, **kwargs)
        if service_name == "s3":
            for event, handler in hooks:
                made.meta.events.register(event, handler)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return hooks


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upload_module, "MULTIPART_THRESHOLD", SMALL_PART)
    monkeypatch.setattr(upload_module, "PART_SIZE", SMALL_PART)


def _padded_archive(model_dir: Path, work: Path, name: str, seed: int) -> Path:
    """The model with 12 MiB of incompressible bytes beside it: a valid archive of about 12.4 MiB."""
    staging = work / f"staging-{seed}"
    shutil.copytree(model_dir, staging)
    (staging / "padding.bin").write_bytes(
        hashlib.shake_256(seed.to_bytes(4, "big")).digest(12 * MIB)  # deterministic, incompressible
    )
    return write_archive(staging, work / f"{seed}" / name)


@pytest.fixture(scope="module")
def large_archives(demo_model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different valid archives of three parts each (at `SMALL_PART`), both named big.tar.gz."""
    work = tmp_path_factory.mktemp("large")
    return tuple(_padded_archive(demo_model_dirs["sentiment"], work, "big.tar.gz", seed) for seed in (1, 2))  # type: ignore[return-value]


def _sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _upload(archive: Path, *args: str, bucket: str = BUCKET) -> Any:
    return runner.invoke(app, ["upload", str(archive), "--bucket", bucket, "--prefix", PREFIX, *args])


def _object(s3: Any, key: str, bucket: str = BUCKET) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _keys(s3: Any) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def _open_uploads(s3: Any, bucket: str = BUCKET) -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_upload_lands_byte_identical_with_its_sha256_verified(s3: Any, demo_archives: dict[str, Path]) -> None:
    archive = demo_archives["sentiment"]
    result = _upload(archive, "--key", "team-a/sentiment-v2.tar.gz")

    assert result.exit_code == 0, result.output
    local = archive.read_bytes()
    assert _object(s3, "models/team-a/sentiment-v2.tar.gz") == local
    head = s3.head_object(Bucket=BUCKET, Key="models/team-a/sentiment-v2.tar.gz", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == _sha256(local)
    assert f"SHA-256 {_sha256(local)} verified" in result.output
    assert "test:       'a short sentence to check that the model answers' ->" in result.output  # the report
    assert "TargetModel: team-a/sentiment-v2.tar.gz" in result.output
    assert "mme invoke --endpoint ENDPOINT_NAME --model team-a/sentiment-v2.tar.gz" in result.output


@pytest.mark.parametrize("owner", ["", "alice"])
def test_stage_resolves_bucket_and_prefix_from_ssm(s3: Any, demo_archives: dict[str, Path], owner: str) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    path = f"/mme/{owner}/dev" if owner else "/mme/dev"
    ssm.put_parameter(Name=f"{path}/bucket", Value=BUCKET, Type="String")
    ssm.put_parameter(Name=f"{path}/model-prefix", Value="team-models/", Type="String")
    ssm.put_parameter(Name=f"{path}/endpoint-name", Value="Mme-dev-Endpoint", Type="String")

    result = runner.invoke(app, ["upload", str(demo_archives["topic"]), "--stage", "dev", "--owner", owner])

    assert result.exit_code == 0, result.output
    assert _object(s3, "team-models/topic.tar.gz") == demo_archives["topic"].read_bytes()
    assert "mme invoke --endpoint Mme-dev-Endpoint --model topic.tar.gz" in result.output
    assert f"--region {REGION}" in result.output


def test_a_stage_that_is_not_deployed_is_named(s3: Any, demo_archives: dict[str, Path]) -> None:
    result = runner.invoke(app, ["upload", str(demo_archives["topic"]), "--stage", "dev"])

    assert result.exit_code == 2
    assert "stage 'dev' is not deployed in us-east-1" in result.output
    assert "/mme/dev/bucket" in result.output
    assert _keys(s3) == []


def test_second_upload_to_a_key_is_refused_and_the_object_is_unchanged(s3: Any, demo_archives: dict[str, Path]) -> None:
    assert _upload(demo_archives["sentiment"], "--key", "mood.tar.gz").exit_code == 0
    before = s3.head_object(Bucket=BUCKET, Key="models/mood.tar.gz")

    result = _upload(demo_archives["topic"], "--key", "mood.tar.gz")

    assert result.exit_code == 2
    assert f"models/mood.tar.gz already exists in bucket {BUCKET} (uploaded " in result.output
    assert "upload the new version under a new key, e.g. --key mood-v2.tar.gz" in result.output
    assert "Traceback" not in result.output
    assert _object(s3, "models/mood.tar.gz") == demo_archives["sentiment"].read_bytes()
    assert s3.head_object(Bucket=BUCKET, Key="models/mood.tar.gz")["LastModified"] == before["LastModified"]


def test_the_write_itself_is_conditional_when_the_key_is_taken_after_the_check(
    s3: Any, demo_archives: dict[str, Path], cli_s3_hooks: list[tuple[str, Callable[..., Any]]]
) -> None:
    def race(**_: Any) -> None:  # another upload lands between our HeadObject and our PutObject
        s3.put_object(Bucket=BUCKET, Key="models/sentiment-v3.tar.gz", Body=b"the other upload")

    cli_s3_hooks.append(("before-call.s3.PutObject", race))
    result = _upload(demo_archives["sentiment"], "--key", "sentiment-v3.tar.gz")

    assert result.exit_code == 2
    assert "models/sentiment-v3.tar.gz already exists" in result.output
    assert "e.g. --key sentiment-v4.tar.gz" in result.output
    assert _object(s3, "models/sentiment-v3.tar.gz") == b"the other upload"


def _not_a_model(tmp_path: Path) -> Path:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no SavedModel here")
    return write_archive(tmp_path / "notes", tmp_path / "notes.tar.gz")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.tar.gz", "missing.tar.gz does not exist"),
        (lambda tmp: tmp, "is a folder: upload an archive"),
        (lambda tmp: (tmp / "model.zip").write_bytes(b"PK") and tmp / "model.zip", "is not a <model>.tar.gz archive"),
        (
            lambda tmp: (tmp / "junk.tar.gz").write_bytes(b"not gzip at all") and tmp / "junk.tar.gz",
            "junk.tar.gz is not a readable .tar.gz archive",
        ),
        (_not_a_model, "no TensorFlow SavedModel in"),
    ],
    ids=["missing", "folder", "not-tar-gz", "not-an-archive", "invalid-archive"],
)
def test_a_bad_archive_is_refused_before_anything_is_uploaded(
    s3: Any, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    result = _upload(make(tmp_path))

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert _keys(s3) == []
    assert _open_uploads(s3) == []


@pytest.mark.parametrize(
    ("key", "message"),
    [("../escape.tar.gz", "must be a key relative to the model prefix"), ("model.zip", "must name a <model>.tar.gz")],
)
def test_a_bad_key_is_refused(s3: Any, demo_archives: dict[str, Path], key: str, message: str) -> None:
    result = _upload(demo_archives["topic"], "--key", key)

    assert result.exit_code == 2
    assert message in result.output
    assert _keys(s3) == []


@pytest.mark.parametrize("bucket", [BUCKET, PLAIN_BUCKET], ids=["model-store-bucket", "plain-bucket"])
def test_interrupted_multipart_upload_resumes_with_only_the_missing_parts(
    s3: Any,
    bucket: str,
    large_archives: tuple[Path, Path],
    small_parts: None,
    cli_s3_hooks: list[tuple[str, Callable[..., Any]]],
) -> None:
    archive = large_archives[0]
    sent: list[int] = []
    fail_part: list[int] = [2]

    def upload_part(params: dict[str, Any], **_: Any) -> None:
        sent.append(params["PartNumber"])
        if params["PartNumber"] in fail_part:
            raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")

    cli_s3_hooks.append(("before-parameter-build.s3.UploadPart", upload_part))
    first = _upload(archive, bucket=bucket)

    assert first.exit_code == 2
    assert "the upload of" in first.output
    assert "stopped at part 2 of 3" in first.output
    assert "run the same command again to resume" in first.output
    assert sent == [1, 2]
    (upload,) = _open_uploads(s3, bucket)
    assert [part["PartNumber"] for part in s3.list_parts(Bucket=bucket, Key="models/big.tar.gz",
                                                         UploadId=upload["UploadId"])["Parts"]] == [1]  # fmt: skip
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)

    sent.clear()
    fail_part.clear()
    second = _upload(archive, bucket=bucket)

    assert second.exit_code == 0, second.output
    assert sent == [2, 3]  # part 1 was kept
    assert "resuming: 1 of 3 parts" in second.output
    assert f"({decimal(archive.stat().st_size)}, 3 parts, 1 resumed)" in second.output
    local = archive.read_bytes()
    assert _object(s3, "models/big.tar.gz", bucket) == local
    parts = [local[offset : offset + SMALL_PART] for offset in range(0, len(local), SMALL_PART)]
    composite = _sha256(b"".join(hashlib.sha256(part).digest() for part in parts))
    reported = s3.head_object(Bucket=bucket, Key="models/big.tar.gz", ChecksumMode="ENABLED")["ChecksumSHA256"]
    assert reported.split("-")[0] == composite  # S3 appends "-3"; moto 5.2.5 does not
    assert _open_uploads(s3, bucket) == []


def test_an_open_upload_of_another_file_is_aborted_and_started_over(
    s3: Any,
    large_archives: tuple[Path, Path],
    small_parts: None,
    cli_s3_hooks: list[tuple[str, Callable[..., Any]]],
    tmp_path: Path,
) -> None:
    archive = tmp_path / "big.tar.gz"
    shutil.copy2(large_archives[0], archive)
    sent: list[int] = []
    fail_part: list[int] = [3]

    def upload_part(params: dict[str, Any], **_: Any) -> None:
        sent.append(params["PartNumber"])
        if params["PartNumber"] in fail_part:
            raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")

    cli_s3_hooks.append(("before-parameter-build.s3.UploadPart", upload_part))
    assert _upload(archive).exit_code == 2
    (stale,) = _open_uploads(s3)

    shutil.copy2(large_archives[1], archive)  # the same name and key, another file
    sent.clear()
    fail_part.clear()
    result = _upload(archive)

    assert result.exit_code == 0, result.output
    assert "an unfinished upload of another file to this key was aborted" in result.output
    assert sent == [1, 2, 3]
    assert _object(s3, "models/big.tar.gz") == large_archives[1].read_bytes()
    assert stale["UploadId"] not in [upload["UploadId"] for upload in _open_uploads(s3)]
    assert _open_uploads(s3) == []


def test_a_key_taken_while_a_multipart_upload_runs_is_not_overwritten(
    s3: Any,
    large_archives: tuple[Path, Path],
    small_parts: None,
    cli_s3_hooks: list[tuple[str, Callable[..., Any]]],
) -> None:
    def race(**_: Any) -> None:
        s3.put_object(Bucket=BUCKET, Key="models/big.tar.gz", Body=b"the other upload")

    cli_s3_hooks.append(("before-call.s3.CompleteMultipartUpload", race))
    result = _upload(large_archives[0])

    assert result.exit_code == 2
    assert "models/big.tar.gz already exists" in result.output
    assert _object(s3, "models/big.tar.gz") == b"the other upload"
    assert _open_uploads(s3) == []  # ours was aborted


def test_usage_names_the_two_ways_to_say_where(s3: Any, demo_archives: dict[str, Path]) -> None:
    archive = str(demo_archives["topic"])
    for args in (
        [],
        ["--bucket", BUCKET],
        ["--prefix", PREFIX],
        ["--stage", "dev", "--bucket", BUCKET, "--prefix", PREFIX],
    ):
        result = runner.invoke(app, ["upload", archive, *args])
        assert result.exit_code == 2, args
        assert "give either --stage (with --owner for a direct deploy) or both --bucket and --prefix" in result.output


def test_a_missing_bucket_is_named(s3: Any, demo_archives: dict[str, Path]) -> None:
    result = runner.invoke(app, ["upload", str(demo_archives["topic"]), "--bucket", "no-such-bucket", "--prefix", "m"])

    assert result.exit_code == 2
    assert "bucket no-such-bucket does not exist" in result.output


def test_access_denied_names_the_operation_and_the_permission(
    s3: Any, demo_archives: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    @set_initial_no_auth_action_count(3)  # these three calls set up the user; every later one is authorized by IAM
    def upload_as_a_user_who_may_not_put() -> Any:
        iam = boto3.client("iam", region_name=REGION)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"},
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        return _upload(demo_archives["topic"])

    result = upload_as_a_user_who_may_not_put()

    assert result.exit_code == 2
    assert f"access denied: PutObject on s3://{BUCKET}/models/topic.tar.gz" in result.output
    assert "needs s3:PutObject" in result.output
    assert _keys(s3) == []


def test_no_credentials_and_no_region_are_named(
    demo_archives: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    archive = str(demo_archives["topic"])

    no_region = runner.invoke(app, ["upload", archive, "--bucket", BUCKET, "--prefix", PREFIX])
    assert no_region.exit_code == 2
    assert "no AWS region: give --region or set AWS_REGION" in no_region.output

    no_credentials = runner.invoke(app, ["upload", archive, "--bucket", BUCKET, "--prefix", PREFIX, "--region", REGION])
    assert no_credentials.exit_code == 2
    assert "no AWS credentials found" in no_credentials.output
    assert "Traceback" not in no_credentials.output


def test_an_archive_without_a_tokenizer_needs_the_default_tokenizer_to_be_tested(
    s3: Any, demo_model_dirs: dict[str, Path], demo_tokenizer: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(demo_model_dirs["sentiment"] / "0", bare / "0")
    shutil.copy2(demo_model_dirs["sentiment"] / "mme.json", bare / "mme.json")
    archive = write_archive(bare, tmp_path / "bare.tar.gz")
    with tarfile.open(archive) as tar:
        assert "tokenizer.json" not in tar.getnames()

    untested = _upload(archive)
    assert untested.exit_code == 2
    assert "is not uploaded: it could not be tested" in untested.output
    assert "--default-tokenizer" in untested.output
    assert _keys(s3) == []

    tested = _upload(archive, "--default-tokenizer", str(demo_tokenizer))
    assert tested.exit_code == 0, tested.output
    assert _object(s3, "models/bare.tar.gz") == archive.read_bytes()


def test_a_part_corrupted_on_the_way_is_caught_by_the_checksum_and_the_object_removed(
    s3: Any,
    large_archives: tuple[Path, Path],
    small_parts: None,
    cli_s3_hooks: list[tuple[str, Callable[..., Any]]],
) -> None:
    def corrupt_part_2(params: dict[str, Any], **_: Any) -> None:
        # The request as it will be sent: flip one byte of part 2's body, keeping the SHA-256 computed before.
        if params["query_string"]["partNumber"] == 2:
            body = params["body"].getvalue()
            params["body"] = io.BytesIO(bytes([body[0] ^ 0xFF]) + body[1:])

    cli_s3_hooks.append(("before-call.s3.UploadPart", corrupt_part_2))
    result = _upload(large_archives[0])

    # S3 refuses such a part (BadDigest); moto 5.2.5 stores it, and the object's checksum then tells.
    assert result.exit_code == 2
    assert "the object was deleted: run the command again" in result.output
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert _open_uploads(s3) == []

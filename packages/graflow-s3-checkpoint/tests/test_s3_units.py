"""Pure logic of the S3 store, no server: addresses, settings layers, client sharing, error translation."""

from __future__ import annotations

import errno
import sys
import threading
from pathlib import Path

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

import graflow_s3_checkpoint
from graflow import plugins
from graflow.exceptions import CheckpointError, ConfigError
from graflow_s3_checkpoint import (
    S3AccessDeniedError,
    S3Address,
    S3BucketNotFoundError,
    S3CheckpointError,
    S3CheckpointStore,
    S3CredentialsError,
    S3EndpointError,
    S3Settings,
    S3ThrottledError,
    configure,
    settings_for,
)
from graflow_s3_checkpoint.config import DEFAULT_MAX_ATTEMPTS, MIB, client_for
from graflow_s3_checkpoint.errors import translate

PACKAGE = Path(__file__).resolve().parents[1]


# -- registration -------------------------------------------------------------------------------------
def test_store_serves_the_s3_scheme() -> None:
    assert S3CheckpointStore.schemes == ("s3",)
    assert plugins.get_checkpoint_store_class("s3") is S3CheckpointStore


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in 3.11")
def test_entry_point_and_dependencies_are_declared() -> None:
    import tomllib

    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["graflow"] == {"s3": "graflow_s3_checkpoint.plugin"}
    assert "boto3>=1.34" in project["dependencies"]
    assert any(dep.startswith("graflow-core") for dep in project["dependencies"])
    from graflow_s3_checkpoint.__about__ import __version__

    assert __version__ == "0.3.0"


def test_installed_distribution_exposes_the_entry_point() -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("graflow-s3-checkpoint")
    except PackageNotFoundError:
        pytest.skip("graflow-s3-checkpoint is not installed (source checkout on PYTHONPATH)")
    found = {ep.name: ep.value for ep in dist.entry_points if ep.group == "graflow"}
    assert found == {"s3": "graflow_s3_checkpoint.plugin"}


# -- addresses ----------------------------------------------------------------------------------------
def test_address_parts() -> None:
    parsed = S3Address.parse("s3://my-bucket/runs/run-1")
    assert (parsed.bucket, parsed.key) == ("my-bucket", "runs/run-1")
    assert parsed.folder_prefix == "runs/run-1/"
    assert S3Address.parse("s3://my-bucket").folder_prefix == ""
    assert S3Address.parse("s3://my-bucket/").folder_prefix == ""
    assert S3Address.parse("S3://my-bucket/a/").folder_prefix == "a/"
    # keys are taken literally: no percent-decoding
    assert S3Address.parse("s3://my-bucket/a%20b").key == "a%20b"


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("s3:///runs/x", "no bucket name"),
        ("s3://ab/x", "2 characters"),
        ("s3://My-Bucket/x", "uppercase"),
        ("s3://my_bucket/x", "characters other than"),
        ("s3://-bucket/x", "characters other than"),
        ("s3://my..bucket/x", "two dots"),
        ("s3://192.168.1.10/x", "IP address"),
        ("s3://" + "a" * 64 + "/x", "64 characters"),
        ("s3://my-bucket/x?endpoint_url=http://h", "query strings"),
        ("file:///tmp/x", "not an s3:// address"),
    ],
)
def test_bad_addresses_are_config_errors(address: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        S3Address.parse(address)
    assert "s3://my-bucket/some/prefix/run-1" in str(info.value)  # the error shows the right shape


@pytest.mark.parametrize("address", ["s3://my-bucket", "s3://my-bucket/", "s3://my-bucket/folder/"])
def test_checkpoint_base_must_name_an_object(address: str) -> None:
    with pytest.raises(ConfigError, match="names a bucket or a folder"):
        S3Address.parse_object(address)


def test_join_and_part_address() -> None:
    store = S3CheckpointStore()
    assert store.join("s3://b-1/runs", "c1") == "s3://b-1/runs/c1"
    assert store.join("s3://b-1/runs/", "c1") == "s3://b-1/runs/c1"
    assert store.join("s3://b-1", "c1") == "s3://b-1/c1"
    assert store.part_address("s3://b-1/runs/c1", ".pkl") == "s3://b-1/runs/c1.pkl"


# -- settings -----------------------------------------------------------------------------------------
def test_defaults() -> None:
    settings = settings_for("bkt")
    assert settings.multipart_threshold == 8 * MIB
    assert settings.multipart_chunksize == 8 * MIB
    assert settings.page_size == 1000
    assert settings.put_args() == {}
    assert settings.effective_retries() == {"mode": "standard", "total_max_attempts": DEFAULT_MAX_ATTEMPTS}


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("GRAFLOW_S3_SSE", "aws:KMS")
    monkeypatch.setenv("GRAFLOW_S3_SSE_KMS_KEY_ID", "alias/ckpt")
    monkeypatch.setenv("GRAFLOW_S3_STORAGE_CLASS", "standard_ia")
    monkeypatch.setenv("GRAFLOW_S3_CHECKSUM", "sha256")
    monkeypatch.setenv("GRAFLOW_S3_MULTIPART_THRESHOLD", "16MiB")
    monkeypatch.setenv("GRAFLOW_S3_MULTIPART_CHUNKSIZE", "6MB")
    monkeypatch.setenv("GRAFLOW_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("GRAFLOW_S3_RETRY_MODE", "adaptive")
    monkeypatch.setenv("GRAFLOW_S3_PAGE_SIZE", "250")
    monkeypatch.setenv("GRAFLOW_S3_READ_TIMEOUT", "2.5")
    settings = settings_for("bkt")
    assert settings.endpoint_url == "http://127.0.0.1:9000"
    assert settings.multipart_threshold == 16 * MIB
    assert settings.multipart_chunksize == 6_000_000
    assert settings.page_size == 250
    assert settings.read_timeout == 2.5
    assert settings.put_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/ckpt",
        "StorageClass": "STANDARD_IA",
        "ChecksumAlgorithm": "SHA256",
    }
    assert settings.effective_retries() == {"mode": "adaptive", "total_max_attempts": 3}


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("GRAFLOW_S3_SSE", "aes", "AES256, aws:kms"),
        ("GRAFLOW_S3_STORAGE_CLASS", "COLD", "STANDARD_IA"),
        ("GRAFLOW_S3_MULTIPART_THRESHOLD", "lots", "not a size"),
        ("GRAFLOW_S3_MULTIPART_CHUNKSIZE", "1MiB", "5 MiB to 5 GiB"),
        ("GRAFLOW_S3_MAX_ATTEMPTS", "0", "whole number >= 1"),
        ("GRAFLOW_S3_RETRY_MODE", "eager", "standard, adaptive"),
        ("GRAFLOW_S3_PAGE_SIZE", "5000", "limit of 1000"),
        ("GRAFLOW_S3_ENDPOINT_URL", "127.0.0.1:9000", "http:// or https://"),
        ("GRAFLOW_S3_CONNECT_TIMEOUT", "-1", "seconds > 0"),
    ],
)
def test_bad_environment_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=needle) as info:
        settings_for("bkt")
    assert var in str(info.value)


def test_layers_bucket_over_global_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_S3_STORAGE_CLASS", "STANDARD_IA")
    monkeypatch.setenv("GRAFLOW_S3_REGION", "eu-west-1")
    assert settings_for("one").storage_class == "STANDARD_IA"
    configure(storage_class="ONEZONE_IA")
    configure(bucket="two", storage_class="GLACIER_IR", region_name="ap-south-1")
    assert settings_for("one").storage_class == "ONEZONE_IA"
    assert settings_for("one").region_name == "eu-west-1"
    assert settings_for("two").storage_class == "GLACIER_IR"
    assert settings_for("two").region_name == "ap-south-1"
    configure(bucket="two", storage_class=None)  # None drops the override
    assert settings_for("two").storage_class == "ONEZONE_IA"
    graflow_s3_checkpoint.reset()
    assert settings_for("two").storage_class == "STANDARD_IA"


def test_configure_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*endpoint"):
        configure(endpoint="http://x")
    with pytest.raises(ConfigError, match="not a valid bucket name"):
        configure(bucket="Bad_Bucket", sse="AES256")
    with pytest.raises(ConfigError, match=r"sse=.*not one of"):
        configure(sse="rot13")
    with pytest.raises(ConfigError, match="boto3 S3 client"):
        configure(client=object())
    configure(sse_kms_key_id="alias/x")  # fine on its own, but not without sse=aws:kms
    with pytest.raises(ConfigError, match="sse_kms_key_id is set but sse is None"):
        settings_for("bkt")


def test_aws_retry_env_is_respected_when_graflow_sets_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "9")
    assert settings_for("bkt").effective_retries() is None  # botocore reads AWS_MAX_ATTEMPTS itself
    configure(max_attempts=2)
    assert settings_for("bkt").effective_retries() == {"mode": "standard", "total_max_attempts": 2}


def test_public_view_masks_secrets() -> None:
    shown = S3Settings(aws_access_key_id="AKIA1", aws_secret_access_key="sekrit", aws_session_token="tok").public()
    assert shown["aws_access_key_id"] == "AKIA1"
    assert shown["aws_secret_access_key"] == "***" and shown["aws_session_token"] == "***"
    assert "sekrit" not in repr(shown)


# -- clients ------------------------------------------------------------------------------------------
def test_one_client_per_configuration_shared_by_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(
        endpoint_url="http://127.0.0.1:1", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    seen: list[object] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        seen.append(client_for(settings_for("bkt")))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in seen}) == 1
    client = seen[0]
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.retries["total_max_attempts"] == DEFAULT_MAX_ATTEMPTS
    # another bucket with the same client settings shares the client; other settings get their own
    assert client_for(settings_for("other")) is client
    configure(bucket="third", endpoint_url="http://127.0.0.1:2")
    assert client_for(settings_for("third")) is not client
    # a changed AWS environment (credentials, profile, endpoint) builds a new client
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t2")
    assert client_for(settings_for("bkt")) is not client


def test_given_client_is_used_as_is() -> None:
    import boto3

    mine = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )
    configure(client=mine)
    assert client_for(settings_for("bkt")) is mine


def test_unknown_profile_is_a_credentials_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    configure(profile_name="no-such-profile")
    with pytest.raises(S3CredentialsError, match="no-such-profile") as info:
        S3CheckpointStore().read_part("s3://bkt/x", ".meta.json")
    assert "~/.aws/config" in str(info.value)


# -- error translation ------------------------------------------------------------------------------
def _client_error(code: str, status: int, operation: str = "PutObject", attempts: int = 0, **extra: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"message for {code}", **extra},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": attempts},
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


def _translate(exc: BaseException, operation: str = "PutObject", **kw: object) -> BaseException:
    return translate(
        exc, address="s3://bkt/runs/c1.pkl", bucket="bkt", operation=operation, endpoint="http://127.0.0.1:9", **kw
    )  # type: ignore[arg-type]


def test_missing_key_is_file_not_found() -> None:
    err = _translate(_client_error("NoSuchKey", 404, "GetObject"), "GetObject")
    assert isinstance(err, FileNotFoundError) and not isinstance(err, CheckpointError)
    assert err.errno == errno.ENOENT and err.filename == "s3://bkt/runs/c1.pkl"


def test_missing_bucket() -> None:
    err = _translate(_client_error("NoSuchBucket", 404))
    assert isinstance(err, S3BucketNotFoundError) and isinstance(err, CheckpointError)
    assert "'bkt' does not exist" in str(err) and "aws s3 mb s3://bkt" in str(err)
    assert err.code == "NoSuchBucket" and err.path == "s3://bkt/runs/c1.pkl"


@pytest.mark.parametrize(
    ("operation", "action"),
    [
        ("PutObject", "s3:PutObject"),
        ("GetObject", "s3:GetObject"),
        ("UploadPart", "s3:PutObject"),
        ("ListObjectsV2", "s3:ListBucket"),
    ],
)
def test_access_denied_names_the_missing_permission(operation: str, action: str) -> None:
    err = _translate(_client_error("AccessDenied", 403, operation), operation)
    assert isinstance(err, S3AccessDeniedError)
    assert action in str(err) and "s3://bkt/runs/c1.pkl" in str(err) and "bucket policy" in str(err)
    assert "kms:" not in str(err)
    kms = _translate(_client_error("AccessDenied", 403, operation), operation, kms=True)
    assert "kms:GenerateDataKey" in str(kms)


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"])
def test_rejected_credentials(code: str) -> None:
    err = _translate(_client_error(code, 403))
    assert isinstance(err, S3CredentialsError) and code in str(err)


@pytest.mark.parametrize(("code", "status"), [("SlowDown", 503), ("ThrottlingException", 400), ("Busy", 503)])
def test_throttling_after_retries(code: str, status: int) -> None:
    err = _translate(_client_error(code, status, attempts=5), max_attempts=6)
    assert isinstance(err, S3ThrottledError)
    assert "6 attempts" in str(err) and "GRAFLOW_S3_MAX_ATTEMPTS" in str(err) and "adaptive" in str(err)


def test_no_credentials_and_partial_credentials() -> None:
    err = _translate(NoCredentialsError())
    assert isinstance(err, S3CredentialsError)
    assert "AWS_ACCESS_KEY_ID" in str(err) and "AWS_PROFILE" in str(err) and "s3://bkt/runs/c1.pkl" in str(err)
    partial = _translate(PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"))
    assert isinstance(partial, S3CredentialsError) and "AWS_SECRET_ACCESS_KEY" in str(partial)
    profile = _translate(ProfileNotFound(profile="ghost"))
    assert isinstance(profile, S3CredentialsError) and "ghost" in str(profile)


def test_connection_problems() -> None:
    err = _translate(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bkt"))
    assert isinstance(err, S3EndpointError) and "AWS_ENDPOINT_URL_S3" in str(err)
    timeout = _translate(ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), "GetObject")
    assert isinstance(timeout, S3EndpointError) and "GetObject" in str(timeout)


def test_archived_object_and_refused_settings() -> None:
    err = _translate(_client_error("InvalidObjectState", 403, "GetObject", StorageClass="GLACIER"), "GetObject")
    assert type(err) is S3CheckpointError
    assert "GLACIER" in str(err) and "restore-object" in str(err)
    refused = _translate(_client_error("InvalidStorageClass", 400))
    assert type(refused) is S3CheckpointError and "storage class" in str(refused)


def test_other_errors_keep_code_and_status() -> None:
    err = _translate(_client_error("InternalError", 500))
    assert type(err) is S3CheckpointError and err.code == "InternalError" and "HTTP 500" in str(err)


def test_non_boto_exceptions_pass_through() -> None:
    original = ValueError("boom")
    assert _translate(original) is original


# -- the test server helper ------------------------------------------------------------------------------
def test_missing_server_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from graflow_testkit.services.s3 import service_unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"port taken.*CI=true"):
        service_unavailable("port taken")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="port taken"):
        service_unavailable("port taken")

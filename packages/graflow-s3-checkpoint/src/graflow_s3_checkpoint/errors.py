"""What can go wrong talking to S3, as Graflow errors that name the address and say what to do.

Every error is a :class:`~graflow.exceptions.CheckpointError` (so ``graflow checkpoints`` prints it
as one line) except a missing object, which is a :class:`FileNotFoundError` as the
``CheckpointStore`` contract asks (the manager turns it into its own "checkpoint is missing"
message). The original boto3 exception is kept as ``__cause__``.

Throttling (``SlowDown``, HTTP 503 ...) is retried by botocore with exponential backoff and jitter
before it ever reaches here; :class:`S3ThrottledError` means every attempt was throttled.
"""

from __future__ import annotations

import errno
from typing import Any

from graflow.exceptions import CheckpointError

THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "503",
    }
)
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "InvalidClientTokenId",
    }
)
DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"})
MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# IAM action each request needs (named in access-denied hints).
IAM_ACTIONS = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "GetObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
}
_SETTINGS_HINT = "graflow_s3_checkpoint.configure(...) or the GRAFLOW_S3_* environment variables"


class S3CheckpointError(CheckpointError):
    """An S3 request for a checkpoint failed. ``code`` is S3's error code when it sent one."""

    def __init__(
        self, message: str, path: Any = None, *, code: str | None = None, operation: str | None = None
    ) -> None:
        super().__init__(message, path)
        self.code = code
        self.operation = operation


class S3CredentialsError(S3CheckpointError):
    """No credentials were found, or S3 rejected the ones in use (unknown key, bad secret, expired token)."""


class S3AccessDeniedError(S3CheckpointError):
    """The credentials are valid but not allowed to do this (IAM or bucket policy, KMS key policy)."""


class S3BucketNotFoundError(S3CheckpointError):
    """The bucket of the address does not exist (at this endpoint / in this account)."""


class S3ThrottledError(S3CheckpointError):
    """S3 kept throttling the request through every retry."""


class S3EndpointError(S3CheckpointError):
    """The S3 endpoint could not be reached, or the connection broke or timed out."""


def _describe_endpoint(endpoint: str | None) -> str:
    return endpoint or "the default AWS endpoint"


def translate(
    exc: BaseException,
    *,
    address: str,
    bucket: str,
    operation: str,
    endpoint: str | None = None,
    max_attempts: int | None = None,
    kms: bool = False,
) -> BaseException:
    """The Graflow error to raise for ``exc`` raised by boto3 during ``operation`` on ``address``."""
    from botocore import exceptions as bex

    where = f"{address} ({operation} at {_describe_endpoint(endpoint)})"
    if isinstance(exc, bex.NoCredentialsError):
        return S3CredentialsError(
            f"No AWS credentials found for {where}: boto3 looked in the environment, the shared config and "
            f"credentials files and the instance/container role. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"choose a profile with AWS_PROFILE (or GRAFLOW_S3_PROFILE), or pass credentials to "
            f"graflow_s3_checkpoint.configure(aws_access_key_id=..., aws_secret_access_key=...).",
            address,
            operation=operation,
        )
    if isinstance(exc, bex.PartialCredentialsError):
        return S3CredentialsError(
            f"Incomplete AWS credentials for {where}: {exc}. Set both the access key id and the secret "
            f"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or both keys of the profile).",
            address,
            operation=operation,
        )
    if isinstance(exc, bex.ProfileNotFound):
        return S3CredentialsError(
            f"{exc} (needed for {address}). Add the profile to ~/.aws/config or ~/.aws/credentials, or fix "
            f"AWS_PROFILE / GRAFLOW_S3_PROFILE / configure(profile_name=...).",
            address,
            operation=operation,
        )
    if isinstance(exc, bex.CredentialRetrievalError):
        return S3CredentialsError(
            f"Could not load AWS credentials for {where}: {exc}. Check the credential source of the profile "
            f"(credential_process, SSO login, role) or set credentials explicitly.",
            address,
            operation=operation,
        )
    unreachable = (
        bex.EndpointConnectionError,
        bex.ConnectTimeoutError,
        bex.ReadTimeoutError,
        bex.ConnectionClosedError,
        bex.ProxyConnectionError,
        bex.SSLError,
        bex.IncompleteReadError,
        *((bex.ResponseStreamingError,) if hasattr(bex, "ResponseStreamingError") else ()),
    )
    if isinstance(exc, unreachable):
        return S3EndpointError(
            f"Cannot talk to the S3 endpoint for {where}: {exc}. Check that the endpoint is right "
            f"(GRAFLOW_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3 or configure(endpoint_url=...)), that the server is "
            f"running and reachable, and the network or proxy settings.",
            address,
            operation=operation,
        )
    if isinstance(exc, bex.ClientError):
        return _client_error(
            exc, where=where, address=address, bucket=bucket, operation=operation, max_attempts=max_attempts, kms=kms
        )
    if isinstance(exc, bex.BotoCoreError):
        return S3CheckpointError(f"S3 request for {where} failed: {exc}", address, operation=operation)
    return exc


def _client_error(
    exc: Any, *, where: str, address: str, bucket: str, operation: str, max_attempts: int | None, kms: bool
) -> BaseException:
    error = exc.response.get("Error", {}) or {}
    meta = exc.response.get("ResponseMetadata", {}) or {}
    code = str(error.get("Code") or meta.get("HTTPStatusCode") or "")
    message = error.get("Message") or ""
    status = meta.get("HTTPStatusCode")
    said = f"{code}: {message}" if message else code
    if code in MISSING_KEY_CODES:
        return FileNotFoundError(errno.ENOENT, "no such S3 object", address)
    if code == "NoSuchBucket":
        return S3BucketNotFoundError(
            f"Bucket {bucket!r} does not exist, so {where} failed ({said}). Create it (aws s3 mb s3://{bucket}, "
            f"with --endpoint-url for an S3-compatible server) or fix the bucket name in the address; check the "
            f"endpoint and account too.",
            address,
            code=code,
            operation=operation,
        )
    if code in THROTTLE_CODES or (status == 503 and not code.startswith("KMS")):
        attempts = meta.get("RetryAttempts")
        tried = f"{attempts + 1} attempts" if isinstance(attempts, int) else "every retry"
        return S3ThrottledError(
            f"S3 kept throttling {where} ({said}) through {tried} with exponential backoff. Lower the request "
            f"rate (fewer parallel checkpoints, other key prefixes), raise the attempts (GRAFLOW_S3_MAX_ATTEMPTS, "
            f"now {max_attempts if max_attempts is not None else 'the AWS default'}) or use "
            f"GRAFLOW_S3_RETRY_MODE=adaptive.",
            address,
            code=code,
            operation=operation,
        )
    if code == "InvalidObjectState":
        storage = error.get("StorageClass") or "an archive class"
        return S3CheckpointError(
            f"{where} is archived in storage class {storage} and cannot be read directly ({said}). Restore it "
            f"first (aws s3api restore-object) or write checkpoints with a storage class that reads at once "
            f"(STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR) via {_SETTINGS_HINT}.",
            address,
            code=code,
            operation=operation,
        )
    if code in CREDENTIAL_CODES:
        return S3CredentialsError(
            f"S3 rejected the credentials used for {where} ({said}). Check the access key id and secret "
            f"(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile), refresh an expired session token, "
            f"and check the machine's clock.",
            address,
            code=code,
            operation=operation,
        )
    if code in DENIED_CODES or status == 403 or (code.startswith("KMS.") and "Access" in code):
        action = IAM_ACTIONS.get(operation, "the S3 action")
        key = address.split("/", 3)[3] if address.count("/") >= 3 else ""
        kms_hint = ""
        if kms:
            kms_hint = (
                " Objects are encrypted with SSE-KMS, so the credentials also need kms:GenerateDataKey (writes) "
                "and kms:Decrypt (reads) on the key."
            )
        return S3AccessDeniedError(
            f"Access denied to {where} ({said}). The credentials in use lack {action} on "
            f"arn:aws:s3:::{bucket}/{key if action != 's3:ListBucket' else ''}: grant it in the IAM policy or the "
            f"bucket policy, or use other credentials (AWS_PROFILE, configure(profile_name=...)).{kms_hint}",
            address,
            code=code,
            operation=operation,
        )
    if code in ("InvalidStorageClass", "InvalidEncryptionAlgorithmError", "InvalidArgument") or code.startswith("KMS."):
        return S3CheckpointError(
            f"S3 refused {where}: {said}. Check the storage class, encryption (sse, sse_kms_key_id) and checksum "
            f"settings in {_SETTINGS_HINT}; S3-compatible servers support fewer of them than AWS.",
            address,
            code=code,
            operation=operation,
        )
    if code == "InvalidBucketName":
        return S3CheckpointError(
            f"S3 refused the bucket name {bucket!r} in {where}: {said}.", address, code=code, operation=operation
        )
    return S3CheckpointError(
        f"S3 request failed for {where}: {said} (HTTP {status}).", address, code=code or None, operation=operation
    )


__all__ = [
    "S3AccessDeniedError",
    "S3BucketNotFoundError",
    "S3CheckpointError",
    "S3CredentialsError",
    "S3EndpointError",
    "S3ThrottledError",
    "translate",
]

"""Settings of the S3 checkpoint store and the boto3 clients built from them.

Checkpoint stores are built with no arguments, so settings come from three layers, the first one
that sets a value winning:

1. :func:`configure` with ``bucket="name"``: overrides for one bucket only;
2. :func:`configure` without ``bucket``: overrides for every bucket;
3. ``GRAFLOW_S3_*`` environment variables (see :data:`ENV_VARS`);

and whatever none of them sets is left to boto3's standard configuration chain (``AWS_*``
environment variables, ``~/.aws/config`` and ``~/.aws/credentials`` profiles, container and
instance roles; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for a custom endpoint) or to the
defaults in :class:`S3Settings`.

One boto3 client is built per distinct client configuration and shared by every thread (boto3
clients are thread-safe; sessions are not, so a session only lives while its client is built,
under a lock). The ``AWS_*`` variables that boto3 reads when building a client are part of the
cache key, so changing them (tests, long-running notebooks) gives a new client on the next call.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any

from graflow.exceptions import ConfigError
from graflow_s3_checkpoint.address import bucket_name_problem

MIB = 1024 * 1024
#: S3 refuses multipart parts smaller than this (except the last one) and larger than 5 GiB.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
DEFAULT_MAX_ATTEMPTS = 6
SSE_VALUES = ("AES256", "aws:kms", "aws:kms:dsse")
STORAGE_CLASSES = (
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
)
CHECKSUM_ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME")
RETRY_MODES = ("standard", "adaptive", "legacy")
ADDRESSING_STYLES = ("auto", "path", "virtual")

#: ``GRAFLOW_S3_*`` variable -> setting it provides.
ENV_VARS: dict[str, str] = {
    "GRAFLOW_S3_ENDPOINT_URL": "endpoint_url",
    "GRAFLOW_S3_REGION": "region_name",
    "GRAFLOW_S3_PROFILE": "profile_name",
    "GRAFLOW_S3_SSE": "sse",
    "GRAFLOW_S3_SSE_KMS_KEY_ID": "sse_kms_key_id",
    "GRAFLOW_S3_STORAGE_CLASS": "storage_class",
    "GRAFLOW_S3_CHECKSUM": "checksum_algorithm",
    "GRAFLOW_S3_MULTIPART_THRESHOLD": "multipart_threshold",
    "GRAFLOW_S3_MULTIPART_CHUNKSIZE": "multipart_chunksize",
    "GRAFLOW_S3_MAX_CONCURRENCY": "max_concurrency",
    "GRAFLOW_S3_MAX_ATTEMPTS": "max_attempts",
    "GRAFLOW_S3_RETRY_MODE": "retry_mode",
    "GRAFLOW_S3_ADDRESSING_STYLE": "addressing_style",
    "GRAFLOW_S3_CONNECT_TIMEOUT": "connect_timeout",
    "GRAFLOW_S3_READ_TIMEOUT": "read_timeout",
    "GRAFLOW_S3_PAGE_SIZE": "page_size",
}
_ENV_NAMES = tuple(ENV_VARS)

# The AWS variables boto3 reads while building a session and client: part of the client cache key.
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "AWS_CA_BUNDLE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
)
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": MIB}
_SIZE_UNITS.update({"g": 1000**3, "gb": 1000**3, "gib": 1024 * MIB, "ki": 1024, "mi": MIB, "gi": 1024 * MIB})


@dataclass(frozen=True)
class S3Settings:
    """Every setting of the S3 checkpoint store. ``None`` means "boto3 decides" (its chain or default)."""

    #: S3-compatible endpoint (MinIO, Ceph, moto), e.g. ``http://127.0.0.1:9000``.
    endpoint_url: str | None = None
    region_name: str | None = None
    #: A profile of ``~/.aws/config``; ``AWS_PROFILE`` is honoured by boto3 when this is unset.
    profile_name: str | None = None
    #: Explicit credentials (only through :func:`configure`; prefer the AWS chain).
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    #: Server-side encryption of every part: ``"AES256"`` (SSE-S3) or ``"aws:kms"`` (SSE-KMS).
    sse: str | None = None
    #: KMS key id or ARN for ``sse="aws:kms"`` (the bucket's or account's default key when unset).
    sse_kms_key_id: str | None = None
    storage_class: str | None = None
    #: Flexible checksum sent with every upload and checked by S3 (``"SHA256"``, ``"CRC32"`` ...).
    #: ``None`` leaves it to botocore (CRC32 on recent versions; ``AWS_REQUEST_CHECKSUM_CALCULATION=
    #: when_required`` turns that off for servers that reject it).
    checksum_algorithm: str | None = None
    #: Parts of at least this many bytes are uploaded as multipart uploads.
    multipart_threshold: int = 8 * MIB
    multipart_chunksize: int = 8 * MIB
    #: Parallel part uploads of one multipart upload.
    max_concurrency: int = 4
    #: Attempts per request including the first (throttling and 5xx are retried with backoff).
    max_attempts: int | None = None
    retry_mode: str | None = None
    #: ``"path"`` for servers without virtual-host bucket names (most MinIO set-ups).
    addressing_style: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    #: Keys per listing request (S3 returns at most 1,000).
    page_size: int = 1000
    #: A ready boto3 S3 client to use as is; every client-building setting above is then ignored.
    client: Any = None

    def put_args(self) -> dict[str, str]:
        """Extra arguments of every upload request (encryption, storage class, checksum)."""
        args: dict[str, str] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.checksum_algorithm:
            args["ChecksumAlgorithm"] = self.checksum_algorithm
        return args

    def effective_retries(self) -> dict[str, Any] | None:
        """The botocore ``retries`` config, or None to let ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` decide."""
        unset = self.max_attempts is None and self.retry_mode is None
        if unset and (os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")):
            return None
        # botocore's "max_attempts" counts retries only; "total_max_attempts" counts the first try too.
        return {
            "mode": self.retry_mode or "standard",
            "total_max_attempts": self.max_attempts if self.max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
        }

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked (for logs and error messages)."""
        shown = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in ("aws_secret_access_key", "aws_session_token"):
                value = "***"
            elif f.name == "client" and value is not None:
                value = type(value).__name__
            shown[f.name] = value
        return shown


_FIELD_NAMES = frozenset(f.name for f in fields(S3Settings))


# -- validation ------------------------------------------------------------------------------------------
def _choice(name: str, value: Any, allowed: tuple[str, ...], source: str, *, fold: bool = False) -> str:
    text = str(value).strip()
    for option in allowed:
        if text == option or (fold and text.lower() == option.lower()):
            return option
    raise ConfigError(f"{source}: {name}={value!r} is not one of: {', '.join(allowed)}.")


def _size(name: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be a size in bytes, got {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(
            f"{source}: {name}={value!r} is not a size; write bytes (8388608) or a number with a unit "
            f"(8MiB, 16MB, 1GiB)."
        )
    unit = (match.group(2) or "").lower()
    return int(match.group(1)) * (_SIZE_UNITS[unit] if unit else 1)


def _positive_int(name: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be a whole number >= 1, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{source}: {name} must be a whole number >= 1, got {value!r}")
    return number


def _seconds(name: str, value: Any, source: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ConfigError(f"{source}: {name} must be a number of seconds > 0, got {value!r}")
    return number


def _clean(name: str, value: Any, source: str) -> Any:
    """Validate and normalise one setting; ``source`` says where it came from (for the error)."""
    if value is None:
        return None
    if name == "client":
        if not hasattr(value, "put_object") or not hasattr(value, "get_paginator"):
            raise ConfigError(f"{source}: client must be a boto3 S3 client (boto3.client('s3')), got {value!r}")
        return value
    if name == "sse":
        if str(value).strip().lower() in ("", "none", "off"):
            return None
        return _choice(name, value, SSE_VALUES, source, fold=True)
    if name == "storage_class":
        return _choice(name, value, STORAGE_CLASSES, source, fold=True)
    if name == "checksum_algorithm":
        if str(value).strip().lower() in ("", "none", "off"):
            return None
        return _choice(name, value, CHECKSUM_ALGORITHMS, source, fold=True)
    if name == "retry_mode":
        return _choice(name, value, RETRY_MODES, source, fold=True)
    if name == "addressing_style":
        return _choice(name, value, ADDRESSING_STYLES, source, fold=True)
    if name in ("multipart_threshold", "multipart_chunksize"):
        size = _size(name, value, source)
        if name == "multipart_chunksize" and not MIN_PART_SIZE <= size <= MAX_PART_SIZE:
            raise ConfigError(
                f"{source}: multipart_chunksize={value!r} is outside what S3 accepts for a part "
                f"(5 MiB to 5 GiB). Use for example 8MiB."
            )
        if name == "multipart_threshold" and size < 1:
            raise ConfigError(f"{source}: multipart_threshold must be at least 1 byte, got {value!r}")
        return size
    if name in ("max_concurrency", "max_attempts"):
        return _positive_int(name, value, source)
    if name == "page_size":
        size = _positive_int(name, value, source)
        if size > 1000:
            raise ConfigError(f"{source}: page_size={value!r} is above S3's limit of 1000 keys per listing")
        return size
    if name in ("connect_timeout", "read_timeout"):
        return _seconds(name, value, source)
    if name == "endpoint_url":
        text = str(value).strip()
        if not re.match(r"^https?://[^/\s]+", text):
            raise ConfigError(
                f"{source}: endpoint_url={value!r} must be an http:// or https:// URL, "
                f"e.g. http://127.0.0.1:9000 for a local MinIO."
            )
        return text
    text = str(value)
    return text if text.strip() else None


def _check_combination(settings: S3Settings, source: str) -> None:
    if settings.sse_kms_key_id and settings.sse not in ("aws:kms", "aws:kms:dsse"):
        raise ConfigError(
            f"{source}: sse_kms_key_id is set but sse is {settings.sse!r}; a KMS key only applies with "
            f"sse='aws:kms' (set GRAFLOW_S3_SSE=aws:kms or configure(sse='aws:kms'))."
        )


# -- the layers ------------------------------------------------------------------------------------------
_lock = threading.RLock()
_global: dict[str, Any] = {}
_per_bucket: dict[str, dict[str, Any]] = {}
_generation = 0
_resolved: dict[tuple[Any, ...], S3Settings] = {}
_clients: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_MAX_CLIENTS = 16


def configure(*, bucket: str | None = None, **settings: Any) -> None:
    """Override settings of the S3 checkpoint store, for every bucket or (``bucket="name"``) one bucket.

    Keyword names are the fields of :class:`S3Settings` (``endpoint_url``, ``region_name``,
    ``profile_name``, ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
    ``sse``, ``sse_kms_key_id``, ``storage_class``, ``checksum_algorithm``,
    ``multipart_threshold``, ``multipart_chunksize``, ``max_concurrency``, ``max_attempts``,
    ``retry_mode``, ``addressing_style``, ``connect_timeout``, ``read_timeout``, ``page_size``,
    ``client``). Calls add up; passing ``None`` removes that override. Values are checked here, so a
    typo fails at once rather than at the first checkpoint.
    """
    global _generation
    unknown = sorted(set(settings) - _FIELD_NAMES)
    if unknown:
        raise ConfigError(
            f"graflow_s3_checkpoint.configure(): unknown setting(s) {', '.join(unknown)}. "
            f"Known: {', '.join(sorted(_FIELD_NAMES))}."
        )
    if bucket is not None:
        problem = bucket_name_problem(bucket) if isinstance(bucket, str) else "it is not a string"
        if problem:
            raise ConfigError(
                f"graflow_s3_checkpoint.configure(bucket={bucket!r}): not a valid bucket name ({problem})"
            )
    source = "graflow_s3_checkpoint.configure()"
    cleaned = {name: _clean(name, value, source) for name, value in settings.items()}
    with _lock:
        target = _global if bucket is None else _per_bucket.setdefault(bucket, {})
        for name, value in cleaned.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
        _generation += 1
        _resolved.clear()


def reset() -> None:
    """Forget every :func:`configure` override and every cached client."""
    global _generation
    with _lock:
        _global.clear()
        _per_bucket.clear()
        _generation += 1
        _resolved.clear()
        _clients.clear()


def settings_for(bucket: str) -> S3Settings:
    """The settings in force for ``bucket`` (the three layers merged, validated)."""
    env = tuple(os.environ.get(name) for name in _ENV_NAMES)
    key = (bucket, _generation, env)
    found = _resolved.get(key)
    if found is not None:
        return found
    values: dict[str, Any] = {}
    for var, value in zip(_ENV_NAMES, env):
        if value is not None and value.strip():
            values[ENV_VARS[var]] = _clean(ENV_VARS[var], value, f"environment variable {var}")
    with _lock:
        values.update(_global)
        values.update(_per_bucket.get(bucket, {}))
        settings = replace(S3Settings(), **values)
        _check_combination(settings, f"S3 settings for bucket {bucket!r}")
        if len(_resolved) > 256:
            _resolved.clear()
        _resolved[key] = settings
    return settings


def client_for(settings: S3Settings) -> Any:
    """The shared boto3 client for these settings (built on first use)."""
    if settings.client is not None:
        return settings.client
    key = (
        settings.endpoint_url,
        settings.region_name,
        settings.profile_name,
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
        settings.aws_session_token,
        settings.max_attempts,
        settings.retry_mode,
        settings.addressing_style,
        settings.connect_timeout,
        settings.read_timeout,
        settings.max_concurrency,
        tuple(os.environ.get(name) for name in _AWS_ENV),
    )
    client = _clients.get(key)
    if client is not None:
        return client
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _build_client(settings)
            _clients[key] = client
            while len(_clients) > _MAX_CLIENTS:
                _clients.popitem(last=False)
    return client


def _build_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {"max_pool_connections": max(10, settings.max_concurrency + 4)}
    retries = settings.effective_retries()
    if retries is not None:
        options["retries"] = retries
    if settings.addressing_style:
        options["s3"] = {"addressing_style": settings.addressing_style}
    if settings.connect_timeout is not None:
        options["connect_timeout"] = settings.connect_timeout
    if settings.read_timeout is not None:
        options["read_timeout"] = settings.read_timeout
    # Sessions are not thread-safe: this one is only used here, under the module lock.
    session = boto3.session.Session(
        profile_name=settings.profile_name,
        region_name=settings.region_name,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        aws_session_token=settings.aws_session_token,
    )
    kwargs: dict[str, Any] = {"config": Config(**options)}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = settings.endpoint_url
    return session.client("s3", **kwargs)


__all__ = ["ENV_VARS", "S3Settings", "client_for", "configure", "reset", "settings_for"]

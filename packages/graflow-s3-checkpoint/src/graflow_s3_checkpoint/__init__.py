"""Graflow checkpoints on Amazon S3 and S3-compatible object stores.

Installing this distribution is all it takes for ``s3://`` checkpoint paths to work::

    context.checkpoint(path="s3://my-bucket/runs/run-1/")
    ctx, meta = CheckpointManager.resume_from_checkpoint("s3://my-bucket/runs/run-1/ckpt-...")

Credentials, region and endpoint come from boto3's standard chain (environment, profiles, roles;
``AWS_ENDPOINT_URL_S3`` for MinIO and friends). :func:`configure` and ``GRAFLOW_S3_*`` environment
variables override them and set encryption, storage class, multipart and retry behaviour.
"""

from graflow_s3_checkpoint.__about__ import __version__
from graflow_s3_checkpoint.address import S3Address
from graflow_s3_checkpoint.config import ENV_VARS, S3Settings, configure, reset, settings_for
from graflow_s3_checkpoint.errors import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3CheckpointError,
    S3CredentialsError,
    S3EndpointError,
    S3ThrottledError,
)
from graflow_s3_checkpoint.store import S3CheckpointStore

__all__ = [
    "ENV_VARS",
    "S3AccessDeniedError",
    "S3Address",
    "S3BucketNotFoundError",
    "S3CheckpointError",
    "S3CheckpointStore",
    "S3CredentialsError",
    "S3EndpointError",
    "S3Settings",
    "S3ThrottledError",
    "__version__",
    "configure",
    "reset",
    "settings_for",
]

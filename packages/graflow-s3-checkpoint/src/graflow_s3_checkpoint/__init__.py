"""Graflow checkpoints on Amazon S3 and S3-compatible object stores.

Installing this distribution is all it takes for ``s3://`` checkpoint paths to work::

    context.checkpoint(path="s3://my-bucket/runs/run-1/")
    ctx, meta = CheckpointManager.resume_from_checkpoint("s3://my-bucket/runs/run-1/ckpt-...")

Credentials, region and endpoint come from boto3's standard chain (environment, profiles, roles;
``AWS_ENDPOINT_URL_S3`` for MinIO and friends). :func:`configure` and ``GRAFLOW_S3_*`` environment
variables override them and set encryption, storage class, multipart and retry behaviour.
"""

from __future__ import annotations

import importlib
from typing import Any

from graflow_s3_checkpoint.__about__ import __version__

# Imported on first use: Graflow loads this package to find its plugin, and that must not import
# the SDK underneath (every worker process would pay for it).
_EXPORTS = {
    "S3Address": "graflow_s3_checkpoint.address",
    "ENV_VARS": "graflow_s3_checkpoint.config",
    "S3Settings": "graflow_s3_checkpoint.config",
    "configure": "graflow_s3_checkpoint.config",
    "reset": "graflow_s3_checkpoint.config",
    "settings_for": "graflow_s3_checkpoint.config",
    "S3AccessDeniedError": "graflow_s3_checkpoint.errors",
    "S3BucketNotFoundError": "graflow_s3_checkpoint.errors",
    "S3CheckpointError": "graflow_s3_checkpoint.errors",
    "S3CredentialsError": "graflow_s3_checkpoint.errors",
    "S3EndpointError": "graflow_s3_checkpoint.errors",
    "S3ThrottledError": "graflow_s3_checkpoint.errors",
    "S3CheckpointStore": "graflow_s3_checkpoint.store",
}


def __getattr__(attr: str) -> Any:
    module = _EXPORTS.get(attr)
    if module is None:
        raise AttributeError(f"module 'graflow_s3_checkpoint' has no attribute {attr!r}")
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]

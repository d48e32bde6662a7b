"""The plugin module Graflow loads through the ``s3`` entry point of the ``graflow`` group."""

from __future__ import annotations

from graflow.hookspecs import hookimpl


@hookimpl
def graflow_register_checkpoint_stores() -> list[type]:
    from graflow_s3_checkpoint.store import S3CheckpointStore

    return [S3CheckpointStore]

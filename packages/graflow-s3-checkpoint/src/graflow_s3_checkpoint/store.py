"""The ``s3://`` checkpoint store: the three parts of a checkpoint as three S3 objects.

``s3://bucket/prefix/run-1`` is stored as the objects ``prefix/run-1.pkl``,
``prefix/run-1.state.json`` and ``prefix/run-1.meta.json`` of ``bucket``.

Why it is safe to resume from:

* an S3 PUT (and the completion of a multipart upload) replaces an object atomically: readers
  get the old bytes or the new ones, never a mix;
* :class:`~graflow.core.checkpoint.CheckpointManager` writes ``.pkl``, then ``.state.json``, then
  ``.meta.json``; listing only reports bases whose ``.meta.json`` exists, so a run that dies
  half-way leaves nothing that looks like a checkpoint;
* parts of at least ``multipart_threshold`` bytes go up as multipart uploads (boto3's transfer
  manager, parts in parallel); on failure the upload is aborted so no parts linger, and an upload
  that never completes (process killed) is invisible anyway, since S3 only shows completed uploads.
  A bucket lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims the parts a killed process
  leaves behind;
* the manager checks the sha256 of every part against the meta part on load; a flexible checksum
  (``checksum_algorithm``) can also have S3 verify every upload on arrival.
"""

from __future__ import annotations

import io
from typing import Any, ClassVar

from graflow.checkpoint_store import COMMIT_PART, PARTS, CheckpointStore
from graflow_s3_checkpoint.address import S3Address
from graflow_s3_checkpoint.config import S3Settings, client_for, settings_for
from graflow_s3_checkpoint.errors import translate

_OTHER_PARTS = tuple(p for p in PARTS if p != COMMIT_PART)


class S3CheckpointStore(CheckpointStore):
    """Checkpoints in Amazon S3 or an S3-compatible object store (MinIO, Ceph, moto ...).

    Built with no arguments (once per process) like every store; its settings come from
    :func:`graflow_s3_checkpoint.configure`, ``GRAFLOW_S3_*`` variables and the AWS configuration
    chain, looked up per bucket on every call, so they may change while the process runs. Safe to
    use from several threads: it keeps no state of its own and shares thread-safe boto3 clients.
    """

    schemes: ClassVar[tuple[str, ...]] = ("s3",)

    # -- the contract -------------------------------------------------------------------------------
    def write_part(self, base: str, suffix: str, data: bytes) -> None:
        target = S3Address.parse_object(base)
        key = target.key + suffix
        settings = settings_for(target.bucket)
        operation = "PutObject"
        client = None
        try:
            client = client_for(settings)
            extra = settings.put_args()
            if len(data) >= settings.multipart_threshold:
                operation = "CreateMultipartUpload"
                self._upload_multipart(client, settings, target.bucket, key, data, extra)
            else:
                client.put_object(Bucket=target.bucket, Key=key, Body=data, **extra)
        except Exception as exc:  # every boto3 failure is translated; others are re-raised as they are
            mapped = self._error(exc, target, key, operation, settings, client)
            if mapped is exc:
                raise
            raise mapped from exc

    def read_part(self, base: str, suffix: str) -> bytes:
        target = S3Address.parse_object(base)
        key = target.key + suffix
        settings = settings_for(target.bucket)
        client = None
        try:
            client = client_for(settings)
            response = client.get_object(Bucket=target.bucket, Key=key)
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as exc:
            mapped = self._error(exc, target, key, "GetObject", settings, client)
            if mapped is exc:
                raise
            raise mapped from exc

    def list_bases(self, location: str) -> list[str]:
        where = S3Address.parse(location)
        prefix = where.folder_prefix
        settings = settings_for(where.bucket)
        client = None
        bases: list[str] = []
        try:
            client = client_for(settings)
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=where.bucket,
                Prefix=prefix,
                Delimiter="/",
                PaginationConfig={"PageSize": settings.page_size},
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    name = item["Key"][len(prefix) :]
                    if name.endswith(COMMIT_PART) and len(name) > len(COMMIT_PART) and "/" not in name:
                        bases.append(self.join(location, name[: -len(COMMIT_PART)]))
        except Exception as exc:
            mapped = self._error(exc, where, prefix, "ListObjectsV2", settings, client)
            if mapped is exc:
                raise
            raise mapped from exc
        bases.sort()
        return bases

    def delete(self, base: str) -> None:
        target = S3Address.parse_object(base)
        settings = settings_for(target.bucket)
        client = None
        key = target.key + COMMIT_PART
        operation = "DeleteObject"
        try:
            client = client_for(settings)
            # The meta part first, in its own request: the checkpoint stops being listed at once.
            client.delete_object(Bucket=target.bucket, Key=key)
            operation = "DeleteObjects"
            key = target.key + _OTHER_PARTS[0]
            response = client.delete_objects(
                Bucket=target.bucket,
                Delete={"Objects": [{"Key": target.key + p} for p in _OTHER_PARTS], "Quiet": True},
            )
            failed = response.get("Errors") or []
            if failed:
                from botocore.exceptions import ClientError

                first = failed[0]
                key = first.get("Key", key)
                raise ClientError(
                    {"Error": {"Code": first.get("Code"), "Message": first.get("Message")}}, "DeleteObjects"
                )
        except Exception as exc:
            mapped = self._error(exc, target, key, operation, settings, client)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _upload_multipart(
        client: Any, settings: S3Settings, bucket: str, key: str, data: bytes, extra: dict[str, str]
    ) -> None:
        """Upload in parts, in parallel; boto3's transfer manager aborts the upload if any part fails."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=settings.max_concurrency,
            use_threads=settings.max_concurrency > 1,
        )
        client.upload_fileobj(io.BytesIO(data), bucket, key, ExtraArgs=extra or None, Config=config)

    @staticmethod
    def _error(
        exc: BaseException, where: S3Address, key: str, operation: str, settings: S3Settings, client: Any
    ) -> BaseException:
        endpoint = settings.endpoint_url
        if client is not None:
            endpoint = getattr(getattr(client, "meta", None), "endpoint_url", endpoint)
        retries = settings.effective_retries()
        return translate(
            exc,
            address=where.uri(key),
            bucket=where.bucket,
            operation=getattr(exc, "operation_name", None) or operation,
            endpoint=endpoint,
            max_attempts=retries["total_max_attempts"] if retries else None,
            kms=bool(settings.sse and settings.sse.startswith("aws:kms")),
        )


__all__ = ["S3CheckpointStore"]

"""``s3://bucket/key`` addresses: parsing and validation.

The part after the bucket is used as the object key exactly as written (no percent-decoding), so
what ``graflow checkpoints list`` prints is what ``aws s3 ls`` shows. Query strings are refused
rather than silently becoming part of a key: settings such as the endpoint go through
:func:`graflow_s3_checkpoint.configure` or ``GRAFLOW_S3_*`` environment variables instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graflow.exceptions import ConfigError

SCHEME = "s3://"
_BUCKET_CHARS = re.compile(r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
_IP_LIKE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_SHAPE = "S3 checkpoint addresses look like s3://my-bucket/some/prefix/run-1"


@dataclass(frozen=True)
class S3Address:
    """A bucket and a key (the key may be empty for a bucket-wide location)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, address: str) -> S3Address:
        if not isinstance(address, str) or address[: len(SCHEME)].lower() != SCHEME:
            raise ConfigError(f"{address!r} is not an s3:// address. {_SHAPE}.")
        rest = address[len(SCHEME) :]
        bucket, _, key = rest.partition("/")
        if "?" in address or "#" in address:
            raise ConfigError(
                f"S3 address {address!r} contains '?' or '#': query strings and fragments are not supported. "
                f"Set the endpoint, region, encryption and other options with graflow_s3_checkpoint.configure(...) "
                f"or GRAFLOW_S3_* environment variables. {_SHAPE}."
            )
        if not bucket:
            raise ConfigError(f"S3 address {address!r} has no bucket name after 's3://'. {_SHAPE}.")
        problem = bucket_name_problem(bucket)
        if problem:
            raise ConfigError(
                f"S3 address {address!r}: bucket name {bucket!r} is invalid ({problem}). Bucket names are 3-63 "
                f"characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or "
                f"digit. {_SHAPE}."
            )
        return cls(bucket, key)

    @classmethod
    def parse_object(cls, address: str) -> S3Address:
        """An address that must name an object (a checkpoint base), not just a bucket or a folder."""
        parsed = cls.parse(address)
        if not parsed.key or parsed.key.endswith("/"):
            raise ConfigError(
                f"S3 address {address!r} names a bucket or a folder, not a checkpoint: add a name after the last "
                f"'/' (for example {address.rstrip('/')}/run-1), or pass a path ending in '/' to "
                f"create_checkpoint(path=...) to get an automatic name there."
            )
        return parsed

    @property
    def folder_prefix(self) -> str:
        """The key prefix of the objects directly inside this address used as a location."""
        if not self.key:
            return ""
        return self.key if self.key.endswith("/") else self.key + "/"

    def uri(self, key: str | None = None) -> str:
        return f"{SCHEME}{self.bucket}/{self.key if key is None else key}"


def bucket_name_problem(bucket: str) -> str:
    """Why ``bucket`` is not a valid S3 bucket name, or ``""`` when it is."""
    if len(bucket) < 3 or len(bucket) > 63:
        return f"it has {len(bucket)} characters"
    if bucket != bucket.lower():
        return "it has uppercase letters"
    if not _BUCKET_CHARS.match(bucket):
        return "it has characters other than a-z, 0-9, '.' and '-', or does not start and end with a letter or digit"
    if ".." in bucket:
        return "it has two dots in a row"
    if _IP_LIKE.match(bucket):
        return "it looks like an IP address"
    return ""


__all__ = ["SCHEME", "S3Address", "bucket_name_problem"]

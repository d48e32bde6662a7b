"""The S3 store passes the checkpoint-store conformance suite of graflow-testkit, against a real moto_server."""

from __future__ import annotations

import pytest

from graflow.core.checkpoint import store_for
from graflow_s3_checkpoint import S3CheckpointStore
from graflow_testkit.checkpoint_stores import CheckpointStoreConformance

pytestmark = pytest.mark.s3


class TestS3StoreConformance(CheckpointStoreConformance):
    @pytest.fixture
    def store(self) -> S3CheckpointStore:
        # The instance the manager uses for s3:// addresses, so both halves of the suite test one object.
        found = store_for("s3://any-bucket/x")
        assert isinstance(found, S3CheckpointStore)
        return found

    @pytest.fixture
    def location(self, s3_location: str) -> str:
        return s3_location

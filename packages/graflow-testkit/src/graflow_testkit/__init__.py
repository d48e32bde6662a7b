"""Conformance suites that Graflow plugin authors subclass in their own tests."""

from graflow_testkit.__about__ import __version__
from graflow_testkit.channels import ChannelConformance
from graflow_testkit.checkpoint_stores import CheckpointStoreConformance
from graflow_testkit.handlers import TaskHandlerConformance
from graflow_testkit.policies import GroupPolicyConformance
from graflow_testkit.queues import BrokerConformance, TaskQueueConformance

__all__ = [
    "BrokerConformance",
    "ChannelConformance",
    "CheckpointStoreConformance",
    "GroupPolicyConformance",
    "TaskHandlerConformance",
    "TaskQueueConformance",
    "__version__",
]

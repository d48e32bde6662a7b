"""An example third-party Graflow plugin.

Installing this distribution makes two names available to every workflow, with no import needed:

* ``@task(handler="shout")`` runs the task in-process and upper-cases a string result;
* ``group.with_policy("quorum")`` lets a parallel group succeed when a strict majority of its
  members succeeded.

Graflow finds them through the ``example`` entry point in the ``graflow`` group, which points at
:mod:`graflow_example_plugin.plugin`.
"""

from graflow_example_plugin.__about__ import __version__
from graflow_example_plugin.handler import ShoutTaskHandler
from graflow_example_plugin.policy import QuorumGroupPolicy

__all__ = ["QuorumGroupPolicy", "ShoutTaskHandler", "__version__"]

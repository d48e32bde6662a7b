"""The ``xfail_tests`` mechanism every conformance suite shares."""

from __future__ import annotations

from typing import ClassVar

import pytest


class ExpectedFailures:
    """Base of every suite: ``xfail_tests`` maps test names to why this backend fails them.

    Listed tests run as strict xfails, so one that starts passing is reported and its entry can
    go; a name that matches no test is an error (a typo would otherwise hide a real failure).
    """

    xfail_tests: ClassVar[dict[str, str]] = {}

    @pytest.fixture(autouse=True)
    def _graflow_expected_failures(self, request: pytest.FixtureRequest) -> None:
        unknown = [name for name in self.xfail_tests if not callable(getattr(type(self), name, None))]
        if unknown:
            raise AssertionError(
                f"{type(self).__name__}.xfail_tests names tests that do not exist: {', '.join(sorted(unknown))}"
            )
        node = request.node
        reason = self.xfail_tests.get(getattr(node, "originalname", None) or node.name)
        if reason is not None:
            node.add_marker(pytest.mark.xfail(reason=reason, strict=True))

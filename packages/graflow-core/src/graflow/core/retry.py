"""RetryPolicy: how often and how patiently a failing task is tried again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from graflow.exceptions import ConfigError


@dataclass
class RetryPolicy:
    """Retries with exponential backoff.

    ``max_retries`` retries after the first failure; the wait before retry *k* (0-based) is
    ``initial_interval * backoff_factor**k`` capped at ``max_interval``, scaled by a random factor
    in [0.5, 1.5] when ``jitter``. ``retry_on`` limits retries to those exception types. The budget
    is per visit: a task reached again later (a loop, a jump) starts with a fresh budget.
    """

    max_retries: int = 0
    initial_interval: float = 1.0
    backoff_factor: float = 2.0
    max_interval: float = 60.0
    jitter: bool = False
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"RetryPolicy.max_retries must be a whole number >= 0, got {self.max_retries!r}")
        if self.initial_interval < 0 or self.max_interval < 0 or self.backoff_factor < 0:
            raise ConfigError("RetryPolicy intervals and backoff_factor must not be negative")
        if isinstance(self.retry_on, type):
            self.retry_on = (self.retry_on,)
        self.retry_on = tuple(self.retry_on)
        for exc_type in self.retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigError(f"RetryPolicy.retry_on must hold exception classes, got {exc_type!r}")

    def get_delay(self, retry_count: int) -> float:
        delay = min(self.initial_interval * (self.backoff_factor**retry_count), self.max_interval)
        if self.jitter:
            delay = min(delay * random.uniform(0.5, 1.5), self.max_interval)
        return delay

    def should_retry(self, error: BaseException, retries_done: int) -> bool:
        return retries_done < self.max_retries and isinstance(error, self.retry_on)


__all__ = ["RetryPolicy"]

"""Bounded retries that honour ``retry-after``, and a circuit breaker for providers that are down.

Provider files translate their SDK's exceptions into :class:`ProviderError` (with
``retryable`` and ``retry_after``); this module decides whether and when to try again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bot.errors import ProviderError

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 20.0  # a longer server hint is not worth keeping a user waiting for


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``retry-after`` (or ``retry-after-ms``-style) header value."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; while open, calls fail at once.

    After ``cooldown`` seconds one trial call is let through (half-open): success closes the
    breaker, failure opens it again. Stops a turn pipeline from hammering a provider that
    is down, and gives users an immediate answer instead of a long wait.
    """

    def __init__(self, name: str, threshold: int = 5, cooldown: float = 30.0) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        if self._opened_at is None:
            return False
        return time.monotonic() - self._opened_at < self.cooldown

    def check(self) -> None:
        if self.is_open:
            raise ProviderError(
                self.name, "circuit open after repeated failures", retryable=False,
                user_message=f"The {self.name} service is unavailable right now. Please try again in a minute.",
            )

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._failures += 1
        if self._failures >= self.threshold:
            if self._opened_at is None or not self.is_open:
                log.warning("circuit for %s opened after %d failures", self.name, self._failures)
            self._opened_at = time.monotonic()


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    classify: Callable[[BaseException], ProviderError | None],
    attempts: int = 3,
    base_delay: float = 0.5,
    breaker: CircuitBreaker | None = None,
) -> T:
    """Run ``call``; on a retryable :class:`ProviderError` wait and try again, ``attempts`` in all.

    ``classify`` turns an SDK exception into a ProviderError (or None to let it through).
    """
    attempt = 0
    while True:
        attempt += 1
        if breaker is not None:
            breaker.check()
        try:
            result = await call()
        except Exception as exc:  # noqa: BLE001 - classified below
            error = exc if isinstance(exc, ProviderError) else classify(exc)
            if error is None:
                raise
            if breaker is not None and (error.retryable or error.status is None or error.status >= 500):
                breaker.record_failure()
            if not error.retryable or attempt >= attempts:
                if error is exc:
                    raise
                raise error from exc
            delay = error.retry_after
            if delay is None:
                delay = base_delay * 2 ** (attempt - 1) * (0.8 + random.random() * 0.4)
            if delay > MAX_RETRY_AFTER:
                raise error from exc
            log.info("%s failed (%s); retry %d/%d in %.1fs", error.provider, error, attempt, attempts - 1, delay)
            await asyncio.sleep(delay)
        else:
            if breaker is not None:
                breaker.record_success()
            return result

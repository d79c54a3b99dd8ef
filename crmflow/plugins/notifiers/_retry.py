"""When to try a failed delivery again, and when to give up."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from crmflow._clock import parse_duration
from crmflow._suggest import suggest

__all__ = ["RetryPolicy"]

_MICROSECOND = timedelta(microseconds=1)
_KEYS = ("max_attempts", "base", "factor", "cap", "jitter")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with a cap, optional jitter, and a maximum number of attempts.

    After attempt ``n`` (1-based) fails with a retryable error, the next attempt waits about
    ``base * factor ** (n - 1)``, never more than ``cap``. Once attempt ``max_attempts`` has
    failed there is no next attempt and the outbox row becomes ``dead``.

    With the defaults (8 attempts, 30 s base, factor 2, 1 h cap) the waits are about 30 s,
    1 min, 2 min, 4 min, 8 min, 16 min and 32 min, so a message is given up roughly an hour
    after its first attempt (less with jitter).

    Attributes:
        max_attempts: how many attempts in total, the first one included (at least 1).
        base: the wait after the first failed attempt, before jitter (more than zero).
        factor: how much each wait grows over the previous one (at least 1).
        cap: the longest wait (at least ``base``).
        jitter: randomise each wait within its upper half (see :meth:`delay`).

    """

    max_attempts: int = 8
    base: timedelta = timedelta(seconds=30)
    factor: float = 2.0
    cap: timedelta = timedelta(hours=1)
    jitter: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be a whole number, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(
                f"max_attempts must be at least 1 (the first attempt counts), "
                f"got {self.max_attempts}"
            )
        if not isinstance(self.base, timedelta) or self.base <= timedelta(0):
            raise ValueError(f"base must be a duration greater than zero, got {self.base!r}")
        if not isinstance(self.cap, timedelta) or self.cap < self.base:
            raise ValueError(
                f"cap must be a duration at least as long as base ({self.base}), got {self.cap!r}"
            )
        if (
            isinstance(self.factor, bool)
            or not isinstance(self.factor, int | float)
            or not math.isfinite(self.factor)
            or self.factor < 1
        ):
            raise ValueError(
                f"factor must be a finite number of at least 1 (1 means a constant wait), "
                f"got {self.factor!r}"
            )
        if not isinstance(self.jitter, bool):
            raise ValueError(f"jitter must be true or false, got {self.jitter!r}")

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """Build a policy from configuration, e.g. ``{"max_attempts": 5, "base": "30s"}``.

        ``base`` and ``cap`` are durations such as ``"30s"``, ``"10m"``, ``"1h"``, ``"2d"``
        (or timedeltas); missing keys keep their defaults. An unknown key is refused so that a
        typo does not silently fall back to a default.

        :raises ValueError: for an unknown key or a bad value.
        """
        unknown = sorted(set(config) - set(_KEYS))
        if unknown:
            hints = suggest(unknown[0], _KEYS)
            hint = f" (did you mean {' or '.join(repr(h) for h in hints)}?)" if hints else ""
            raise ValueError(
                f"unknown retry policy key {unknown[0]!r}{hint}; known keys: {', '.join(_KEYS)}"
            )
        kwargs: dict[str, Any] = {}
        for key in ("base", "cap"):
            if key in config:
                value = config[key]
                if not isinstance(value, str | timedelta):
                    raise ValueError(
                        f"retry policy {key} must be a duration such as '30s' or '1h', "
                        f"got {value!r}"
                    )
                try:
                    kwargs[key] = parse_duration(value)
                except ValueError as exc:
                    raise ValueError(f"retry policy {key}: {exc}") from None
        for key in ("max_attempts", "factor", "jitter"):
            if key in config:
                kwargs[key] = config[key]
        return cls(**kwargs)

    def delay(self, attempt: int, rng: random.Random) -> timedelta:
        """How long to wait after attempt number ``attempt`` (1-based) failed.

        Without jitter the wait is ``min(cap, base * factor ** (attempt - 1))``. With jitter it
        is drawn uniformly from the upper half of that, ``[d/2, d]`` ("equal jitter"). Equal
        rather than full jitter (``[0, d]``): full jitter spreads retries a little better, but
        it can retry a struggling receiver almost immediately, and the point of backing off
        here is to leave a failing mail server or webhook alone for a while; half the window
        is still enough to keep a burst of messages that failed together from retrying
        together. It also keeps the earliest retry predictable for operators.

        The result is never negative, never more than ``cap``, and depends only on the
        arguments and the state of ``rng`` (one ``rng.random()`` call when jitter is on, none
        when it is off).

        :raises ValueError: when ``attempt`` is less than 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt!r}")
        base_us = self.base / _MICROSECOND
        cap_us = self.cap / _MICROSECOND
        try:
            # float() so that an int factor cannot turn a huge attempt number into a huge
            # exact integer power.
            ceiling = min(cap_us, base_us * float(self.factor) ** (attempt - 1))
        except OverflowError:
            # A huge attempt number with factor > 1 overflows a float long after the cap
            # was reached.
            ceiling = cap_us
        if self.jitter:
            ceiling = ceiling / 2 + rng.random() * (ceiling / 2)
        waited = timedelta(microseconds=math.floor(ceiling))
        # Float rounding must not break the documented bounds.
        return max(timedelta(0), min(self.cap, waited))

    def next_attempt_at(self, now: datetime, attempt: int, rng: random.Random) -> datetime | None:
        """When to make the next attempt after attempt number ``attempt`` failed at ``now``.

        Returns ``None`` once ``attempt`` has reached ``max_attempts``: there is no next
        attempt and the outbox row becomes ``dead``.

        :raises ValueError: when ``attempt`` is less than 1.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt!r}")
        if attempt >= self.max_attempts:
            return None
        return now + self.delay(attempt, rng)

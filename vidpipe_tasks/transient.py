"""Which failures are transient infrastructure errors, and how long to wait before trying again."""

from __future__ import annotations

import random

from vidpipe_tasks.errors import TransientError


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    # Imported here: kombu, redis and SQLAlchemy are always installed, but this module stays cheap to import.
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import InterfaceError, OperationalError

    # OperationalError covers a PostgreSQL restart ("terminating connection", "connection refused") and
    # SQLite's "database is locked"; InterfaceError a connection already closed under us.
    return (
        TransientError,
        BrokerError,
        RedisConnectionError,
        RedisTimeoutError,
        OperationalError,
        InterfaceError,
        ConnectionError,
    )


def is_transient(exc: BaseException) -> bool:
    """True for a broker, result-backend or database disconnect, or a TransientError, also when wrapped once."""
    kinds = _infrastructure_errors()
    return isinstance(exc, kinds) or isinstance(exc.__cause__, kinds)


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [base/2, min(cap, base * 2**retry)].

    Jitter spreads out the retries of the many tasks a restart interrupts at once, so they do not
    hit the server back in lock-step (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    ceiling = min(cap, base * 2 ** min(retry, 30))
    return (rng or random).uniform(min(base / 2, ceiling), ceiling)

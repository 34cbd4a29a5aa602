"""Closing several resources at once, as a shutdown must: every one, whatever the others do."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

__all__ = ["close_all"]

logger = logging.getLogger("messages_mw")


async def close_all(closers: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Call each closer in turn, all of them even when one raises or this is cancelled (a
    store failing to close must not leave every upstream connection open).

    Then a cancellation is re-raised before any other failure (whoever cancelled must see it,
    and asyncio.timeout needs it to become TimeoutError); otherwise the first failure is
    raised and the later ones are logged."""
    cancelled: asyncio.CancelledError | None = None
    failures: list[BaseException] = []
    for close in closers:
        try:
            await close()
        except asyncio.CancelledError as exc:  # re-raised below, once all are closed
            cancelled = cancelled or exc
        except BaseException as exc:  # KeyboardInterrupt too: the rest still get closed
            failures.append(exc)
    if cancelled is not None:
        for failure in failures:
            logger.error("closing failed while cancelled", exc_info=failure)
        raise cancelled
    for failure in failures[1:]:
        logger.error("closing failed (besides the error raised)", exc_info=failure)
    if failures:
        raise failures[0]

"""Celery beat's scheduler for vidpipe: the recovery sweep goes to the front of the registry queue."""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import PersistentScheduler

log = logging.getLogger(__name__)

#: The beat entry whose messages must not wait behind the backlog.
FRONT_OF_QUEUE = ("vidpipe.recover_stalled",)


class Scheduler(PersistentScheduler):
    """PersistentScheduler that moves each sweep it sends to the end of the list workers take next (Redis).

    The sweep shares the registry queue with register_entities; behind a backlog of thousands of scenes it
    would wait minutes (and expire) while a lost chain waits with it. A sweep is a few milliseconds of work.
    """

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        result = super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if entry.task in FRONT_OF_QUEUE and result is not None:
            from vidpipe_tasks.queues import serve_next

            try:
                serve_next(self.app, self.app.vidpipe_settings, result.id)
            except Exception as exc:  # the broker restarting: the sweep still runs, only later
                log.warning("could not move sweep %s to the front of its queue: %s", result.id, exc)
        return result

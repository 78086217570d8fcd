"""A generation worker refuses to start with a generator configuration that cannot work."""

from __future__ import annotations

from celery.signals import celeryd_after_setup

from vidpipe_tasks.settings import GENERATION_QUEUE


@celeryd_after_setup.connect
def _check_generators(sender: str, instance: object, **_: object) -> None:
    """Validate every configured generator once -Q is applied; only workers of the generation queue care."""
    app = instance.app  # type: ignore[attr-defined]
    if GENERATION_QUEUE not in app.amqp.queues.consume_from:
        return
    from vidpipe_tasks.generators import validate_generator
    from vidpipe_tasks.generators.dispatch import configured_generators

    settings = app.vidpipe_settings
    for name in configured_generators(settings):
        try:
            validate_generator(settings, name)
        except ValueError as exc:
            raise SystemExit(f"generation worker cannot start: {exc}") from exc

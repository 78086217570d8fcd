"""Clip generators: a small protocol, the built-in procedural renderer, adapters for real services."""

from __future__ import annotations

from collections.abc import Callable

from vidpipe_tasks.generators.base import CharacterSpec, ClipGenerator, ClipInfo, ClipRequest

__all__ = ["GENERATOR_NAMES", "CharacterSpec", "ClipGenerator", "ClipInfo", "ClipRequest", "get_generator"]


def _procedural() -> ClipGenerator:
    # Imported lazily so that importing the package does not pull in PyAV and Pillow.
    from vidpipe_tasks.generators.procedural import ProceduralGenerator

    return ProceduralGenerator()


_FACTORIES: dict[str, Callable[[], ClipGenerator]] = {"procedural": _procedural}
#: Names accepted by ``get_generator``.
GENERATOR_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_generator(name: str) -> ClipGenerator:
    """Return a new generator instance by name.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown clip generator {name!r}; valid names: {', '.join(GENERATOR_NAMES)}") from None
    return factory()

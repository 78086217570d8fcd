"""Clip generators: a small protocol, the built-in procedural renderer, adapters for real services."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from vidpipe_tasks.generators.base import CharacterSpec, ClipGenerator, ClipInfo, ClipRequest

if TYPE_CHECKING:
    from vidpipe_tasks.generators.remote import RemoteAdapter
    from vidpipe_tasks.settings import Settings

__all__ = [
    "GENERATOR_NAMES",
    "REMOTE_GENERATORS",
    "CharacterSpec",
    "ClipGenerator",
    "ClipInfo",
    "ClipRequest",
    "get_generator",
    "remote_adapter",
    "validate_generator",
]


def _procedural(settings: Settings | None) -> ClipGenerator:
    # Imported lazily so that importing the package does not pull in PyAV and Pillow.
    from vidpipe_tasks.generators.imperfection import Imperfection
    from vidpipe_tasks.generators.procedural import ProceduralGenerator

    return ProceduralGenerator(imperfection=None if settings is None else Imperfection.from_settings(settings))


def _comfyui(settings: Settings) -> RemoteAdapter:
    from vidpipe_tasks.generators.comfyui import ComfyUIAdapter

    return ComfyUIAdapter(settings)


def _veo(settings: Settings) -> RemoteAdapter:
    from vidpipe_tasks.generators.veo import VeoAdapter

    return VeoAdapter(settings)


_FACTORIES: dict[str, Callable[[Settings | None], ClipGenerator]] = {"procedural": _procedural}
#: Remote services, driven through durable provider jobs (vidpipe_tasks.generators.remote).
_REMOTE: dict[str, Callable[[Settings], RemoteAdapter]] = {"comfyui": _comfyui, "veo": _veo}
REMOTE_GENERATORS: tuple[str, ...] = tuple(_REMOTE)
#: Names accepted by ``get_generator`` and ``VIDPIPE_GENERATOR``.
GENERATOR_NAMES: tuple[str, ...] = (*_FACTORIES, *_REMOTE)


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown clip generator {name!r}; valid names: {', '.join(GENERATOR_NAMES)}")


def get_generator(name: str, settings: Settings | None = None) -> ClipGenerator:
    """Return a new local generator instance by name (remote ones: ``remote_adapter``).

    With `settings`, the generator takes its options from them (the procedural one its imperfection);
    without, the defaults.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    """
    if name in _REMOTE:
        raise ValueError(f"{name!r} is a remote generator: use remote_adapter(settings, name)")
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise _unknown(name) from None
    return factory(settings)


def remote_adapter(settings: Settings, name: str) -> RemoteAdapter:
    """The adapter of a remote generator, configured from settings (not validated: see validate_generator).

    One per process and configuration: every poll of every job reuses its HTTP connections and SDK client.
    """
    if name not in _REMOTE:
        raise _unknown(name)
    return _cached_adapter(settings, name)


@lru_cache(maxsize=8)
def _cached_adapter(settings: Settings, name: str) -> RemoteAdapter:
    return _REMOTE[name](settings)


def validate_generator(settings: Settings, name: str | None = None) -> None:
    """Check a generator's configuration without calling it (submit and worker start call this).

    Raises:
        ValueError: one line naming what is wrong (unknown name, missing template, key or server, unknown
            model, unreadable price list).

    """
    name = name or settings.generator
    if name in _FACTORIES:
        return
    from vidpipe_tasks.generators.remote import parse_prices

    parse_prices(settings.generation_prices)
    remote_adapter(settings, name).validate()

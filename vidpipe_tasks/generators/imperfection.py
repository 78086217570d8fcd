"""Seeded generator imperfection: identity drift, a missing declared character, an extra person."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vidpipe_tasks.settings import Settings

#: Kinds of identity drift: the face blended with another person's ("lookalike") or distorted ("perturbed").
DRIFT_KINDS = ("lookalike", "perturbed")


@dataclass(frozen=True)
class Imperfection:
    """How often the procedural generator fails the way real video models do (all 0: never).

    Attributes:
        drift: probability that a character's face drifts (a look-alike or a perturbed face).
        missing: probability that a declared character is left out of the clip.
        extra: probability that the clip shows one extra, undeclared person.
        seed: mixed into every draw, so one installation's imperfections differ from another's.

    """

    drift: float = 0.0
    missing: float = 0.0
    extra: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drift", "missing", "extra"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"VIDPIPE_IMPERFECTION_{name.upper()} must be in [0, 1], got {value}")

    @property
    def enabled(self) -> bool:
        return bool(self.drift or self.missing or self.extra)

    @classmethod
    def from_settings(cls, settings: Settings) -> Imperfection:
        return cls(
            drift=settings.imperfection_drift,
            missing=settings.imperfection_missing,
            extra=settings.imperfection_extra,
            seed=settings.imperfection_seed,
        )


@dataclass(frozen=True)
class Drift:
    """One character's drift: its kind and the numbers that shape it."""

    kind: str  # one of DRIFT_KINDS
    strength: float  # lookalike: weight of the other face; perturbed: size of the distortion
    other: int  # lookalike: index into the faces it may borrow from (taken modulo their count)
    squeeze: float  # perturbed: horizontal scale factor of the face
    shift: tuple[int, int, int]  # perturbed: colour shift per RGB channel


@dataclass(frozen=True)
class SceneFlaws:
    """What goes wrong in one clip: per character drift or absence, and extra people."""

    drift: dict[str, Drift] = field(default_factory=dict)
    missing: frozenset[str] = frozenset()
    #: One number per extra person, used to pick its face (taken modulo the faces available).
    extras: tuple[int, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.drift or self.missing or self.extras)


def _rng(*parts: object) -> random.Random:
    # crc32 of the joined parts: stable across processes, unlike hash().
    return random.Random(zlib.crc32(":".join(str(p) for p in parts).encode("utf-8")))


def draw_flaws(config: Imperfection, project_id: int, scene_index: int, seed: int, tags: list[str]) -> SceneFlaws:
    """The flaws of one clip: a pure function of (config, project, scene, request seed, character tags).

    Each character draws from its own generator keyed by its tag, so adding or removing a character does
    not change another's draw; a new request seed (a regeneration) gives a new, independent draw.
    """
    if not config.enabled:
        return SceneFlaws()
    drift: dict[str, Drift] = {}
    missing = set()
    for tag in tags:
        rng = _rng("imperfection", config.seed, project_id, scene_index, seed, tag)
        gone, drifts = rng.random() < config.missing, rng.random() < config.drift
        kind, strength, other = rng.choice(DRIFT_KINDS), rng.uniform(0.35, 0.6), rng.randrange(1 << 16)
        squeeze, shift = rng.uniform(0.7, 0.85), tuple(rng.randint(-40, 40) for _ in range(3))
        if gone:
            missing.add(tag)
        elif drifts:
            drift[tag] = Drift(kind, strength, other, squeeze, shift)
    rng = _rng("imperfection-extra", config.seed, project_id, scene_index, seed)
    extras = (rng.randrange(1 << 16),) if rng.random() < config.extra else ()
    return SceneFlaws(drift=drift, missing=frozenset(missing), extras=extras)

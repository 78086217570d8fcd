"""The quality gate and the pick among candidates: attempt numbering, seeds, the documented score, the decision.

Pure functions (no database, no broker); docs/quality.md states the same rules for operators.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vidpipe_tasks.settings import Settings

#: Attempt n > 1 renders with seed project_id + SEED_STRIDE * (n - 1): a new draw per attempt, stable on replay.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class QualityPolicy:
    """A project's gate (minimum identity and adherence) and its rounds and candidates per scene."""

    min_identity: float = 0.0
    min_adherence: float = 0.0
    #: Generation rounds at most; round r+1 runs only when round r's best attempt is below the gate.
    max_attempts: int = 1
    #: Candidates per round, generated and analysed in parallel.
    candidates: int = 1

    @property
    def enabled(self) -> bool:
        """Whether scenes run as attempts (gate rounds or candidates) instead of the plain chain."""
        return self.max_attempts > 1 or self.candidates > 1

    def round_attempts(self, round_: int) -> range:
        """The attempt numbers of a round: (r - 1) * K + 1 .. r * K."""
        return range((round_ - 1) * self.candidates + 1, round_ * self.candidates + 1)

    def round_of(self, attempt: int) -> int:
        return (attempt - 1) // self.candidates + 1

    @property
    def total_attempts(self) -> int:
        return self.max_attempts * self.candidates

    def as_dict(self) -> dict:
        return {
            "min_identity": self.min_identity,
            "min_adherence": self.min_adherence,
            "max_attempts": self.max_attempts,
            "candidates": self.candidates,
        }


def quality_for(settings: Settings, storyboard: dict) -> QualityPolicy:
    """The project's policy: its storyboard's `quality:` fields, the VIDPIPE_QUALITY_* settings for the rest.

    A project without a manifest has no analysis to judge: its scenes always run the plain chain.
    """
    block = storyboard.get("quality") or {}
    if not storyboard.get("manifest"):
        return QualityPolicy()

    def pick(name: str) -> object:
        value = block.get(name)
        return getattr(settings, f"quality_{name}") if value is None else value

    return QualityPolicy(
        min_identity=float(pick("min_identity")),
        min_adherence=float(pick("min_adherence")),
        max_attempts=int(pick("max_attempts")),
        candidates=int(pick("candidates")),
    )


def attempt_seed(project_id: int, attempt: int) -> int:
    """The generator seed of an attempt; attempt 1 keeps the seed the plain chain uses (the project id)."""
    return project_id + SEED_STRIDE * (attempt - 1)


def judged_scores(
    analysis: dict, referenced: Iterable[str], declared: Iterable[str]
) -> tuple[float | None, float | None]:
    """(identity, adherence) of an analysis as the gate judges them.

    Identity is the mean similarity of matched faces to their references. When a declared character had a
    reference but no face matched it, identity is 0 (the generator lost the face), not "not judged".
    Adherence is the share of declared characters seen. Either is None when there is nothing to judge
    (no referenced character; no declared character), and both are None for a degraded analysis.
    """
    if analysis.get("status") != "ok":
        return None, None
    components = (analysis.get("continuity") or {}).get("components") or {}
    identity, adherence = components.get("identity"), components.get("adherence")
    if identity is None and set(referenced) & set(declared):
        identity = 0.0
    return _unit(identity), _unit(adherence)


def _unit(value: object) -> float | None:
    if value is None:
        return None
    return min(1.0, max(0.0, float(value)))


def composite_score(identity: float | None, adherence: float | None) -> float | None:
    """The documented score: the mean of identity and adherence, over those judged; None when neither is."""
    present = [v for v in (identity, adherence) if v is not None]
    return sum(present) / len(present) if present else None


@dataclass(frozen=True)
class AttemptScore:
    """What the pick knows of one attempt."""

    attempt: int
    #: The attempt's generation or analysis failed for good (or it was never recorded).
    failed: bool = False
    #: Its analysis ran ("ok"); a degraded analysis cannot be judged.
    analysed_ok: bool = False
    identity: float | None = None
    adherence: float | None = None

    @property
    def score(self) -> float | None:
        return composite_score(self.identity, self.adherence) if self.analysed_ok else None


def passes_gate(policy: QualityPolicy, attempt: AttemptScore) -> bool:
    """An ok analysis at or above both minimums; a component with nothing to judge does not hold it back."""
    if attempt.failed or not attempt.analysed_ok:
        return False
    identity_ok = attempt.identity is None or attempt.identity >= policy.min_identity
    adherence_ok = attempt.adherence is None or attempt.adherence >= policy.min_adherence
    return identity_ok and adherence_ok


def rank_key(attempt: AttemptScore) -> tuple:
    """Larger is better: an ok analysis before a degraded one, then the higher score, then the lower attempt."""
    score = attempt.score
    return (attempt.analysed_ok, score is not None, score if score is not None else 0.0, -attempt.attempt)


def best_attempt(attempts: Iterable[AttemptScore]) -> AttemptScore | None:
    """The attempt to keep among those that did not fail (None when all failed)."""
    usable = [a for a in attempts if not a.failed]
    return max(usable, key=rank_key) if usable else None


@dataclass(frozen=True)
class Decision:
    """What happens after a round: keep an attempt (register it), run the next round, or fail the scene."""

    action: str  # "keep", "next_round" or "fail"
    attempt: int | None
    reason: str


def decide(policy: QualityPolicy, round_: int, attempts: list[AttemptScore]) -> Decision:
    """The gate's decision after `round_`, from every attempt of rounds 1..round_.

    * Keep the best attempt so far when it passes the gate, or when this was the last round.
    * Keep it too when every candidate of this round failed (another round would likely fail alike).
    * Fail the scene only when every attempt so far failed.
    * Otherwise run the next round (new seeds).
    """
    best = best_attempt(attempts)
    if best is None:
        return Decision("fail", None, f"every attempt of the scene failed ({len(attempts)} tried)")
    if passes_gate(policy, best):
        return Decision("keep", best.attempt, f"attempt {best.attempt} passed the gate")
    if round_ >= policy.max_attempts:
        reason = f"best of {len(attempts)} attempt(s), below the gate after {round_} round(s)"
        return Decision("keep", best.attempt, reason)
    this_round = [a for a in attempts if a.attempt in policy.round_attempts(round_)]
    if this_round and all(a.failed for a in this_round):
        return Decision("keep", best.attempt, f"round {round_} failed entirely; kept the best earlier attempt")
    return Decision("next_round", None, f"best attempt {best.attempt} is below the gate; round {round_ + 1} follows")

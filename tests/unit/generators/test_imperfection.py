"""The procedural generator's imperfection: seeded, deterministic, at its configured rates, off by default."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.generators.test_procedural import decode, make_request
from vidpipe_tasks.generators import get_generator
from vidpipe_tasks.generators.base import CharacterSpec
from vidpipe_tasks.generators.imperfection import Imperfection, SceneFlaws, draw_flaws
from vidpipe_tasks.generators.procedural import ProceduralGenerator
from vidpipe_tasks.settings import load_settings

TAGS = ["mara", "bob"]
DRAWS = 4000


def rates(config: Imperfection) -> dict[str, float]:
    """Observed rates over DRAWS (project, scene) pairs: per character for drift and missing, per clip for extra."""
    drift = missing = extra = 0
    for n in range(DRAWS):
        flaws = draw_flaws(config, project_id=1 + n % 40, scene_index=1 + n // 40, seed=1 + n % 40, tags=TAGS)
        drift += len(flaws.drift)
        missing += len(flaws.missing)
        extra += len(flaws.extras)
    return {"drift": drift / (DRAWS * len(TAGS)), "missing": missing / (DRAWS * len(TAGS)), "extra": extra / DRAWS}


def test_imperfection_is_off_by_default_in_settings_and_in_the_generator() -> None:
    settings = load_settings({"VIDPIPE_HOME": "/tmp/vidpipe-imperfection"})
    assert Imperfection.from_settings(settings) == Imperfection()
    assert not Imperfection().enabled
    assert draw_flaws(Imperfection(), 1, 1, 1, TAGS) == SceneFlaws()
    assert not ProceduralGenerator().imperfection.enabled


def test_each_kind_of_flaw_shows_up_at_its_configured_rate_over_many_draws() -> None:
    observed = rates(Imperfection(drift=0.2, missing=0.1, extra=0.3))
    # 8000 character draws: a binomial standard deviation of about 0.0045 at p=0.2; 4 sigma is 0.018.
    assert observed["drift"] == pytest.approx(0.2 * (1 - 0.1), abs=0.02)  # a missing character cannot drift
    assert observed["missing"] == pytest.approx(0.1, abs=0.015)
    assert observed["extra"] == pytest.approx(0.3, abs=0.03)


def test_one_kind_at_a_time_leaves_the_others_at_zero() -> None:
    assert rates(Imperfection(extra=0.5)) | {"extra": 0} == {"drift": 0, "missing": 0, "extra": 0}
    assert rates(Imperfection(missing=0.5))["drift"] == rates(Imperfection(missing=0.5))["extra"] == 0


def test_the_draw_is_a_pure_function_of_project_scene_and_seed_and_a_new_seed_redraws_it() -> None:
    config = Imperfection(drift=0.5, missing=0.3, extra=0.5)
    first = [draw_flaws(config, 3, scene, 3, TAGS) for scene in range(1, 41)]
    assert first == [draw_flaws(config, 3, scene, 3, TAGS) for scene in range(1, 41)]
    reseeded = [draw_flaws(config, 3, scene, 4, TAGS) for scene in range(1, 41)]
    assert reseeded != first
    other_install = [draw_flaws(replace(config, seed=9), 3, scene, 3, TAGS) for scene in range(1, 41)]
    assert other_install != first


def test_a_character_s_draw_does_not_depend_on_who_else_is_in_the_scene() -> None:
    config = Imperfection(drift=0.5, missing=0.3)
    for scene in range(1, 30):
        alone, together = draw_flaws(config, 5, scene, 5, ["mara"]), draw_flaws(config, 5, scene, 5, TAGS)
        assert alone.drift.get("mara") == together.drift.get("mara")
        assert ("mara" in alone.missing) == ("mara" in together.missing)


def test_rates_outside_zero_to_one_are_refused_with_the_setting_named() -> None:
    with pytest.raises(ValueError, match="VIDPIPE_IMPERFECTION_DRIFT"):
        Imperfection(drift=1.5)
    with pytest.raises(ValueError, match="VIDPIPE_IMPERFECTION_EXTRA"):
        load_settings({"VIDPIPE_HOME": "/tmp/x", "VIDPIPE_IMPERFECTION_EXTRA": "-0.1"})


def test_the_rendered_clip_shows_the_drawn_flaws_and_says_so_in_its_appearances(tmp_path: Path) -> None:
    config = Imperfection(drift=1.0, extra=1.0)
    request = make_request(tmp_path, duration_s=0.25, characters=(CharacterSpec("mara"), CharacterSpec("bob")))
    clean = ProceduralGenerator().generate(replace(request, output_path=tmp_path / "clean.mp4"))
    flawed = ProceduralGenerator(imperfection=config).generate(request)
    assert set(clean.appearances) == set(TAGS) and all(v.startswith("invented:") for v in clean.appearances.values())
    assert set(flawed.appearances) == {"mara", "bob", "extra-1"}
    for tag in TAGS:
        assert flawed.appearances[tag].startswith(clean.appearances[tag] + "+")
        assert flawed.appearances[tag].split("+")[1].split(":")[0] in ("lookalike", "perturbed")
    assert flawed.appearances["extra-1"].startswith("extra:")
    assert (decode(flawed.path)[2][0] != decode(clean.path)[2][0]).any()


def test_a_missing_character_is_not_drawn_and_is_reported_missing(tmp_path: Path) -> None:
    request = make_request(tmp_path, duration_s=0.25)
    info = ProceduralGenerator(imperfection=Imperfection(missing=1.0)).generate(request)
    assert info.appearances == {"mara": "missing", "bob": "missing"}
    empty = ProceduralGenerator().generate(replace(request, characters=(), output_path=tmp_path / "empty.mp4"))
    assert (decode(info.path)[2][0] == decode(empty.path)[2][0]).all()


def test_the_generator_built_from_settings_takes_the_imperfection_settings() -> None:
    env = {"VIDPIPE_HOME": "/tmp/x", "VIDPIPE_IMPERFECTION_DRIFT": "0.1", "VIDPIPE_IMPERFECTION_SEED": "4"}
    generator = get_generator("procedural", load_settings(env))
    assert generator.imperfection == Imperfection(drift=0.1, seed=4)

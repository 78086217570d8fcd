"""Storyboard validation: clear (file, field, reason) errors, nothing half-accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidpipe_tasks.cli.demo import example_paths
from vidpipe_tasks.storyboard import StoryboardError, load_storyboard, load_storyboards, validate_storyboard

GOOD = {
    "title": "t",
    "manifest": {
        "name": "m",
        "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "stock:face/t1-0"}],
    },
    "characters": [{"tag": "bo", "name": "Bo"}],
    "scenes": [{"description": "d", "characters": ["ana", "bo"], "size": "320x240"}],
}


def write(tmp_path: Path, data: object, name: str = "board.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_bundled_examples_are_valid() -> None:
    boards = load_storyboards(example_paths())
    assert {b.title for _, b in boards} >= {"The Lighthouse Keepers", "Market Day"}
    with_manifest = [b for _, b in boards if b.manifest]
    assert with_manifest and [b for _, b in boards if b.manifest is None]


def test_scene_format_falls_back_to_defaults(tmp_path: Path) -> None:
    board = load_storyboard(write(tmp_path, GOOD))
    fmt = board.clip_format(board.scenes[0])
    assert (fmt.width, fmt.height, fmt.fps, fmt.duration_s) == (320, 240, 12, 4.0)


def test_an_undeclared_character_is_reported_with_file_and_field(tmp_path: Path) -> None:
    bad = {**GOOD, "scenes": [{"description": "d", "characters": ["zed"]}]}
    path = write(tmp_path, bad)
    with pytest.raises(StoryboardError) as err:
        load_storyboard(path)
    (file, field, reason), *_ = err.value.problems
    assert (file, field) == (str(path), "scene 1.characters") and "zed" in reason


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        ({"scenes": []}, "scenes"),
        ({"scenes": [{"description": "d", "size": "641x360"}]}, "scene 1.size"),
        ({"scenes": [{"description": "d", "fps": 0}]}, "scene 1.fps"),
        ({"title": ""}, "title"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_each_invalid_field_is_named(tmp_path: Path, mutation: dict, field: str) -> None:
    with pytest.raises(StoryboardError) as err:
        load_storyboard(write(tmp_path, {**GOOD, **mutation}))
    assert any(f.startswith(field) for _, f, _ in err.value.problems), err.value.problems


def test_a_missing_reference_image_is_an_error(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["manifest"]["assets"][0]["reference_image"] = "faces/nobody.png"
    with pytest.raises(StoryboardError, match="file not found"):
        load_storyboard(write(tmp_path, data))


def test_an_unknown_stock_face_is_an_error(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data["manifest"]["assets"][0]["reference_image"] = "stock:face/nobody"
    with pytest.raises(StoryboardError, match="reference_image"):
        load_storyboard(write(tmp_path, data))


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD, "good.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("title: [unclosed")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(StoryboardError) as err:
        load_storyboards([good, broken, missing])
    assert {f for f, _, _ in err.value.problems} == {str(broken), str(missing)}


def test_every_problem_of_one_file_is_reported_at_once_with_scenes_counted_from_one(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(
        "title: many faults\n"
        "characters: [{tag: ann, name: Ann}, {tag: ann, name: Ann again}]\n"
        "scenes:\n"
        "  - {description: one, characters: [zed]}\n"
        "  - {description: two, fps: 0}\n"
        "  - {description: three, characters: [ann, ann, yan]}\n"
    )
    with pytest.raises(StoryboardError) as err:
        load_storyboard(path)
    fields = sorted(field for _, field, _ in err.value.problems)
    assert fields == ["scene 1.characters", "scene 2.fps", "scene 3.characters", "scene 3.characters", "tag"]
    reasons = " ".join(reason for _, _, reason in err.value.problems)
    assert "'zed'" in reasons and "'yan'" in reasons and "duplicate ['ann']" in reasons


QUALITY_BOARD = {
    "title": "q",
    "manifest": {"name": "m"},
    "scenes": [{"description": "x"}],
}


def test_a_quality_block_takes_minimums_rounds_and_candidates() -> None:
    board = validate_storyboard(
        {**QUALITY_BOARD, "quality": {"min_identity": 0.45, "max_attempts": 3, "candidates": 2}}, "q", Path()
    )
    assert board.quality.min_identity == 0.45 and board.quality.min_adherence is None
    assert (board.quality.max_attempts, board.quality.candidates) == (3, 2)


@pytest.mark.parametrize(
    ("quality", "field", "reason"),
    [
        ({"min_identity": 1.2}, "quality.min_identity", "less than or equal to 1"),
        ({"min_adherence": -0.1}, "quality.min_adherence", "greater than or equal to 0"),
        ({"max_attempts": 6}, "quality.max_attempts", "less than or equal to 5"),
        ({"candidates": 0}, "quality.candidates", "greater than or equal to 1"),
        ({"candidates": 2.0}, "quality.candidates", "valid integer"),
        ({"max_attempts": True}, "quality.max_attempts", "valid integer"),
        ({"retries": 2}, "quality.retries", "Extra inputs"),
    ],
)
def test_a_bad_quality_block_is_refused_with_its_field(quality: dict, field: str, reason: str) -> None:
    with pytest.raises(StoryboardError) as err:
        validate_storyboard({**QUALITY_BOARD, "quality": quality}, "q", Path())
    assert [(f, r) for _, f, r in err.value.problems if f == field and reason in r], err.value.problems


def test_a_quality_block_without_a_manifest_is_refused() -> None:
    board = {k: v for k, v in QUALITY_BOARD.items() if k != "manifest"}
    with pytest.raises(StoryboardError, match="quality: the gate and candidates judge each clip's analysis"):
        validate_storyboard({**board, "quality": {"candidates": 2}}, "q", Path())

"""Hostile or careless storyboards: strict types, strict YAML/JSON, bounded sizes and quotas, clean errors."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from vidpipe_tasks.inputs import load_inputs
from vidpipe_tasks.limits import InputLimits
from vidpipe_tasks.settings import load_settings
from vidpipe_tasks.storyboard import MAX_DESCRIPTION_CHARS, StoryboardError, load_storyboard

GOOD = {"title": "Tiny", "characters": [{"tag": "otto", "name": "Otto"}], "scenes": [{"description": "Otto waits."}]}


def problems(path: Path, limits: InputLimits | None = None) -> list[tuple[str, str, str]]:
    with pytest.raises(StoryboardError) as caught:
        load_inputs([path], limits)
    for _file, field, reason in caught.value.problems:
        assert "\n" not in field + reason and "Traceback" not in reason
    return caught.value.problems


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def scene(**fields: object) -> dict:
    return {**GOOD, "scenes": [{"description": "d", **fields}]}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"fps": True}, "scene 1.fps"),
        ({"fps": "12"}, "scene 1.fps"),
        ({"duration_s": "4"}, "scene 1.duration_s"),
        ({"duration_s": False}, "scene 1.duration_s"),
        ({"fps": 12.0}, "scene 1.fps"),
    ],
)
def test_a_bool_or_a_numeric_string_is_not_a_number(tmp_path: Path, fields: dict, field: str) -> None:
    found = problems(write_json(tmp_path / "board.json", scene(**fields)))
    assert [f for _, f, _ in found] == [field], found


def test_fps_true_in_yaml_is_refused_rather_than_stored_as_one(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("title: t\nscenes:\n  - description: d\n    fps: true\n")
    ((_, field, reason),) = problems(path)
    assert field == "scene 1.fps" and "integer" in reason


def test_a_number_is_not_a_title(tmp_path: Path) -> None:
    found = problems(write_json(tmp_path / "board.json", {**GOOD, "title": 12}))
    assert [f for _, f, _ in found] == ["title"]


def test_nan_and_infinity_are_refused_in_yaml_and_json(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("title: t\nscenes:\n  - description: d\n    duration_s: .nan\n")
    assert [f for _, f, _ in problems(path)] == ["scene 1.duration_s"]
    raw = tmp_path / "board.json"
    raw.write_text('{"title": "t", "scenes": [{"description": "d", "duration_s": Infinity}]}')
    ((_, field, reason),) = problems(raw)
    assert field == "(file)" and "Infinity is not a number" in reason


def test_a_duplicate_yaml_key_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("title: first\nscenes:\n  - description: d\ntitle: second\n")
    assert problems(path) == [(str(path), "(file)", "not valid YAML: duplicate key 'title' at line 4 column 1")]


def test_a_duplicate_json_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    path.write_text('{"title": "a", "title": "b", "scenes": [{"description": "d"}]}')
    assert problems(path) == [(str(path), "(file)", "not valid JSON: duplicate key 'title'")]


def test_a_duplicate_key_in_a_jsonl_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(GOOD) + "\n" + '{"title": "a", "title": "b", "scenes": []}\n')
    assert problems(batch) == [(f"{batch}:2", "(line)", "not valid JSON: duplicate key 'title'")]


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("title: t\nx: &a [1, 2]\nscenes: *a\n")
    ((_, field, reason),) = problems(path)
    assert field == "(file)" and "aliases" in reason


@pytest.mark.parametrize(
    ("where", "shown", "text"),
    [
        ("title", "title", "The \x00 keeper"),
        ("scenes.0.description", "scene 1.description", "a\x00b"),
        ("characters.0.name", "character 1.name", "Ot\x1bto"),
    ],
)
def test_nul_and_control_characters_are_refused_in_text(tmp_path: Path, where: str, shown: str, text: str) -> None:
    data = json.loads(json.dumps(GOOD))
    target, *path = where.split(".")
    if path:
        data[target][int(path[0])][path[1]] = text
    else:
        data[target] = text
    ((file, field, reason),) = problems(write_json(tmp_path / "board.json", data))
    assert field == shown and "control character" in reason


def test_newlines_and_tabs_are_allowed_in_descriptions(tmp_path: Path) -> None:
    board = load_inputs([write_json(tmp_path / "b.json", scene(description="line one\n\tline two"))])[0].board
    assert board.scenes[0].description == "line one\n\tline two"


def test_a_lone_surrogate_from_a_json_escape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    path.write_text('{"title": "bad \\ud800", "scenes": [{"description": "d"}]}')
    ((_, field, reason),) = problems(path)
    assert field == "title" and "U+D800" in reason


def test_an_unknown_key_with_a_nul_character_is_named_without_printing_the_nul(tmp_path: Path) -> None:
    path = write_json(tmp_path / "board.json", {**GOOD, "ti\x00tle": "x"})
    ((_, field, _),) = problems(path)
    assert field == "ti\\x00tle"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_100k_deep_nesting_is_a_clean_error_not_a_recursion_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    ((_, field, reason),) = problems(path)
    assert field == "(file)" and "nested deeper than 20 levels" in reason


def test_nesting_within_the_limit_but_beyond_the_format_is_refused_by_the_depth_limit(tmp_path: Path) -> None:
    nested: object = 1
    for _ in range(22):
        nested = [nested]
    data = {**GOOD, "extra": nested}
    ((_, field, reason),) = problems(write_json(tmp_path / "board.json", data))
    assert (field, reason) == ("(file)", "nested deeper than 20 levels")


def test_a_device_file_is_refused_without_reading_it() -> None:
    assert problems(Path("/dev/zero")) == [("/dev/zero", "(file)", "not a regular file")]


def test_an_oversized_storyboard_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "#" * 5000 + "\n")
    limits = InputLimits(max_storyboard_bytes=4096)
    ((_, field, reason),) = problems(path, limits)
    assert field == "(file)" and "limit of 4096 (VIDPIPE_MAX_STORYBOARD_BYTES)" in reason


def test_an_oversized_jsonl_file_and_an_oversized_line_are_refused(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "title": "x" * 3000}) + "\n")
    ((where, field, reason),) = problems(batch, InputLimits(max_storyboard_bytes=2048))
    assert (where, field) == (f"{batch}:2", "(line)") and "VIDPIPE_MAX_STORYBOARD_BYTES" in reason
    ((where, field, reason),) = problems(batch, InputLimits(max_input_bytes=1024))
    assert (where, field) == (str(batch), "(file)") and "VIDPIPE_MAX_INPUT_BYTES" in reason


def test_an_overlong_description_is_refused(tmp_path: Path) -> None:
    found = problems(write_json(tmp_path / "b.json", scene(description="x" * (MAX_DESCRIPTION_CHARS + 1))))
    assert [(f, "at most 2000" in r) for _, f, r in found] == [("scene 1.description", True)]


def test_a_project_above_the_scene_quota_is_refused(tmp_path: Path) -> None:
    data = {**GOOD, "scenes": [{"description": "d", "duration_s": 1}] * 101}
    ((_, field, reason),) = problems(write_json(tmp_path / "b.json", data))
    assert field == "scenes" and "101 scenes is more than the quota of 100" in reason


def test_a_project_above_the_seconds_quota_is_refused(tmp_path: Path) -> None:
    data = {**GOOD, "scenes": [{"description": "d", "duration_s": 60}] * 11}
    ((_, field, reason),) = problems(write_json(tmp_path / "b.json", data))
    assert field == "scenes" and "660 s of video" in reason and "VIDPIPE_MAX_PROJECT_SECONDS" in reason


def test_a_project_above_the_pixel_quota_is_refused(tmp_path: Path) -> None:
    # 5 minutes of 4K at 60 fps: within the seconds quota, far above the pixels one.
    four_k = {"size": "3840x2160", "fps": 60, "duration_s": 60}
    data = {**GOOD, "defaults": four_k, "scenes": [{"description": "d"}] * 5}
    ((_, field, reason),) = problems(write_json(tmp_path / "b.json", data))
    assert field == "scenes" and "VIDPIPE_MAX_PROJECT_PIXELS" in reason


def test_the_schema_maxima_no_longer_admit_a_thirty_hour_render(tmp_path: Path) -> None:
    four_k = {"size": "3840x2160", "fps": 60, "duration_s": 60}
    data = {**GOOD, "defaults": four_k, "scenes": [{"description": "d"}] * 200}
    fields = [f for _, f, _ in problems(write_json(tmp_path / "b.json", data))]
    assert fields == ["scenes", "scenes", "scenes"]  # scenes, seconds and pixels quotas


def test_batch_quotas_count_every_file_and_line_together(tmp_path: Path) -> None:
    files = [write_json(tmp_path / f"{i}.json", GOOD) for i in range(3)]
    limits = InputLimits(max_batch_projects=2)
    with pytest.raises(StoryboardError) as caught:
        load_inputs(files, limits)
    assert [(f, fl) for f, fl, _ in caught.value.problems] == [(str(files[0]), "(batch)")]
    assert "3 storyboards is more than the quota of 2" in caught.value.problems[0][2]
    with pytest.raises(StoryboardError, match="VIDPIPE_MAX_BATCH_SECONDS"):
        load_inputs(files, InputLimits(max_batch_seconds=10))
    assert len(load_inputs(files, InputLimits(max_batch_projects=3, max_batch_seconds=12))) == 3


def test_quotas_and_limits_are_settings_read_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "VIDPIPE_HOME": str(tmp_path),
            "VIDPIPE_MAX_PROJECT_SCENES": "3",
            "VIDPIPE_MAX_BATCH_SECONDS": "90.5",
            "VIDPIPE_REFERENCE_ROOTS": os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]),
        }
    )
    limits = settings.input_limits
    assert (limits.max_project_scenes, limits.max_batch_seconds) == (3, 90.5)
    assert limits.reference_roots == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
    assert replace(limits, max_project_scenes=100, max_batch_seconds=7200.0, reference_roots=()) == InputLimits()
    with pytest.raises(ValueError, match="VIDPIPE_MAX_PROJECT_SECONDS must be at least 1"):
        load_settings({"VIDPIPE_HOME": str(tmp_path), "VIDPIPE_MAX_PROJECT_SECONDS": "0"})


def test_a_storyboard_with_thousands_of_bad_scenes_reports_a_bounded_list(tmp_path: Path) -> None:
    data = {**GOOD, "scenes": [{"description": "d", "fps": True}] * 900}
    found = problems(write_json(tmp_path / "b.json", data))
    assert len(found) == 51 and found[-1][1] == "(more)"


def test_load_storyboard_applies_the_same_limits(tmp_path: Path) -> None:
    path = tmp_path / "board.yaml"
    path.write_text("title: a\ntitle: b\nscenes: [{description: d}]\n")
    with pytest.raises(StoryboardError, match="duplicate key"):
        load_storyboard(path)


def test_a_path_longer_than_the_stored_source_column_is_refused(tmp_path: Path) -> None:
    deep = tmp_path
    while len(str(deep)) < 1000:
        deep = deep / ("x" * 200)
    deep.mkdir(parents=True)
    path = write_json(deep / "board.json", GOOD)
    assert problems(path) == [(str(path), "(file)", "path longer than 1000 characters")]

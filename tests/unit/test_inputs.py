"""Submission inputs: files, folders and JSONL batches expand in order, and every problem names its file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATA
from vidpipe_tasks.inputs import load_inputs, priority_arg
from vidpipe_tasks.storyboard import StoryboardError

GOOD = {"title": "Tiny", "characters": [{"tag": "otto", "name": "Otto"}], "scenes": [{"description": "Otto waits."}]}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def problems_of(args: list) -> list[tuple[str, str, str]]:
    with pytest.raises(StoryboardError) as caught:
        load_inputs(args)
    return caught.value.problems


def test_files_are_loaded_in_the_order_given_and_named_by_their_path(tmp_path: Path) -> None:
    first = write_yaml(tmp_path / "b.yaml", {**GOOD, "title": "First"})
    second = tmp_path / "a.json"
    second.write_text(json.dumps({**GOOD, "title": "Second"}))
    inputs = load_inputs([str(first), second])
    assert [(i.source, i.board.title) for i in inputs] == [(str(first), "First"), (str(second), "Second")]
    assert all(i.line is None for i in inputs)


def test_a_folder_contributes_its_yaml_yml_and_json_files_sorted_and_nothing_else(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("c.yml", "a.yaml", "b.json"):
        (folder / name).write_text(json.dumps({**GOOD, "title": name}))
    (folder / "notes.txt").write_text("not a storyboard")
    (folder / "nested").mkdir()
    write_yaml(folder / "nested" / "deep.yaml", GOOD)  # top level only
    inputs = load_inputs([folder])
    assert [i.board.title for i in inputs] == ["a.yaml", "b.json", "c.yml"]


def test_an_empty_folder_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert problems_of([tmp_path / "empty"]) == [
        (str(tmp_path / "empty"), "(folder)", "no *.yaml, *.yml or *.json storyboard inside")
    ]


def test_each_jsonl_line_is_a_storyboard_named_by_file_and_line_and_blank_lines_are_skipped() -> None:
    inputs = load_inputs([DATA / "ops_batch.jsonl"])
    assert [(i.source, i.board.title) for i in inputs] == [
        (f"{DATA / 'ops_batch.jsonl'}:1", "Ops batch one"),
        (f"{DATA / 'ops_batch.jsonl'}:3", "Ops batch two"),
    ]
    assert [i.line for i in inputs] == [1, 3]


def test_reference_images_of_a_jsonl_storyboard_resolve_against_the_jsonl_folder(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
    board = {
        "title": "With reference",
        "manifest": {
            "name": "m",
            "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": "face.png"}],
        },
        "scenes": [{"description": "Ana.", "characters": ["ana"]}],
    }
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(board) + "\n")
    assert load_inputs([batch])[0].board.manifest.assets[0].reference_image == "face.png"
    (tmp_path / "face.png").unlink()
    assert problems_of([batch]) == [
        (f"{batch}:1", "manifest.asset 1.reference_image", f"file not found: {tmp_path / 'face.png'}")
    ]


def test_jsonl_problems_name_the_line_and_a_path_reference_line_is_refused(tmp_path: Path) -> None:
    batch = tmp_path / "batch.jsonl"
    lines = [json.dumps(GOOD), "{not json", json.dumps({"path": "story.yaml"}), json.dumps({"title": "no scenes"})]
    batch.write_text("\n".join(lines) + "\n")
    problems = problems_of([batch])
    assert [(p[0], p[1]) for p in problems] == [
        (f"{batch}:2", "(line)"),
        (f"{batch}:3", "(line)"),
        (f"{batch}:4", "scenes"),
    ]
    assert problems[0][2].startswith("not valid JSON")
    assert "each line is a storyboard itself" in problems[1][2]


def test_a_jsonl_file_without_storyboards_is_an_error(tmp_path: Path) -> None:
    batch = tmp_path / "empty.jsonl"
    batch.write_text("\n\n")
    assert problems_of([batch]) == [(str(batch), "(file)", "no storyboard lines")]


def test_problems_of_every_input_are_reported_together(tmp_path: Path) -> None:
    good = write_yaml(tmp_path / "good.yaml", GOOD)
    bad = write_yaml(tmp_path / "bad.yaml", {"title": "x", "scenes": [{"description": "d", "characters": ["ghost"]}]})
    batch = tmp_path / "batch.jsonl"
    batch.write_text("[1, 2]\n")
    problems = problems_of([good, bad, tmp_path / "missing.yaml", batch])
    assert [(p[0], p[1]) for p in problems] == [
        (str(bad), "scene 1.characters"),
        (str(tmp_path / "missing.yaml"), "(file)"),
        (f"{batch}:1", "(top level)"),
    ]


@pytest.mark.parametrize("text", ["0", "5", "9"])
def test_priority_accepts_integers_0_to_9(text: str) -> None:
    assert priority_arg(text) == int(text)


@pytest.mark.parametrize("text", ["-1", "10", "high", "4.5", ""])
def test_priority_refuses_anything_else(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        priority_arg(text)

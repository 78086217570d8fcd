"""Property-based tests: whatever bytes the storyboard loader and the JSONL reader get, a board or clean problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vidpipe_tasks.inputs import load_inputs
from vidpipe_tasks.storyboard import Storyboard, StoryboardError

#: At least 500 examples per property, in CI and locally (each takes about a millisecond).
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

GOOD = {
    "title": "Fuzz",
    "manifest": {"name": "fz", "assets": [{"type": "character", "tag": "ana", "name": "Ana"}]},
    "characters": [{"tag": "bo", "name": "Bo"}],
    "defaults": {"duration_s": 1.0, "fps": 8, "size": "64x64"},
    "scenes": [{"description": "Ana and Bo.", "characters": ["ana", "bo"], "fps": 8}],
}
YAMLISH = st.text(alphabet=list(":-[]{},\n \t\"'&*!#|>?%@`~0123456789.eE+_abcdefghijklmnoprstuvwxyz\x00\x1b\u2028"))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def outcome(paths: list[Path]) -> list | list[tuple[str, str, str]]:
    """Load; return the boards, or the problems after checking each is one clean line."""
    try:
        boards = load_inputs(paths)
    except StoryboardError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert len(problem) == 3 and all(isinstance(p, str) for p in problem)
            assert "\n" not in problem[1] + problem[2] and "Traceback" not in problem[2]
        return exc.problems
    for item in boards:
        assert isinstance(item.board, Storyboard)
        # What is stored must encode as UTF-8 text without NUL (PostgreSQL refuses both otherwise).
        dumped = json.dumps(item.board.model_dump(mode="json"), ensure_ascii=False)
        assert "\\u0000" not in dumped
        dumped.encode("utf-8")
    return boards


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".yaml", ".json"]))
def test_any_bytes_as_a_storyboard_file_give_a_board_or_clean_problems(folder: Path, data: bytes, suffix: str) -> None:
    path = folder / f"board{suffix}"
    path.write_bytes(data)
    outcome([path])


@FUZZ
@given(text=YAMLISH)
def test_yaml_like_text_gives_a_board_or_clean_problems(folder: Path, text: str) -> None:
    path = folder / "board.yaml"
    path.write_text(text, encoding="utf-8")
    outcome([path])


@FUZZ
@given(
    where=st.sampled_from(["title", "manifest", "characters", "defaults", "scenes", "extra"]),
    value=JSON_VALUES,
    field=st.sampled_from(["description", "fps", "duration_s", "size", "characters", "location", "x"]),
    inner=JSON_VALUES,
)
def test_a_storyboard_with_one_field_replaced_gives_a_board_or_clean_problems(
    folder: Path, where: str, value: object, field: str, inner: object
) -> None:
    board = json.loads(json.dumps(GOOD))
    board[where] = value
    board.setdefault("scenes", [{}])
    if isinstance(board["scenes"], list) and board["scenes"] and isinstance(board["scenes"][0], dict):
        board["scenes"][0][field] = inner
    path = folder / "board.json"
    path.write_text(json.dumps(board), encoding="utf-8")
    outcome([path])


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.just(json.dumps(GOOD)),
            JSON_VALUES.map(json.dumps),
            st.text(max_size=60),
            st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
        ),
        max_size=6,
    )
)
def test_any_jsonl_batch_gives_boards_or_clean_problems_naming_the_line(folder: Path, lines: list[str]) -> None:
    batch = folder / "batch.jsonl"
    batch.write_text("\n".join(lines), encoding="utf-8")
    result = outcome([batch])
    if result and isinstance(result[0], tuple):
        assert all(p[0] == str(batch) or p[0].startswith(f"{batch}:") for p in result)


def test_the_good_storyboard_of_the_fuzz_tests_is_accepted(folder: Path) -> None:
    path = folder / "board.json"
    path.write_text(json.dumps(GOOD))
    assert len(outcome([path])) == 1

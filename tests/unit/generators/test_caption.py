"""Caption fitting: the longest prefix that fits, found with a bounded number of measurements."""

from __future__ import annotations

from vidpipe_tasks.generators.procedural import fit_caption


def one_by_one(text: str, measure, limit: float) -> str:
    """The former renderer: drop one character at a time until the text plus an ellipsis fits."""
    if measure(text) <= limit:
        return text
    while text and measure(text + "…") > limit:
        text = text[:-1]
    return text.rstrip() + "…"


def width(text: str) -> float:
    return sum(3 if c in "il .…" else 7 for c in text)


def test_the_fit_is_the_same_as_removing_one_character_at_a_time() -> None:
    for text in ["short", "a caption that is far too long for a narrow bar " * 3, "il" * 200, ""]:
        for limit in (40, 200, 632):
            assert fit_caption(text, width, limit) == one_by_one(text, width, limit)


def test_a_huge_description_costs_a_bounded_number_of_short_measurements() -> None:
    calls: list[int] = []

    def counting(text: str) -> float:
        calls.append(len(text))
        return width(text)

    fitted = fit_caption("x" * 1_000_000, counting, 632)
    assert fitted.endswith("…") and width(fitted) <= 632
    assert len(calls) <= 12 and max(calls) <= 634  # never measures more than one bar width of text

"""vibe_assets.query: the composed-query grammar, the vector arithmetic, time bounds, rows."""

from __future__ import annotations

import numpy as np
import pytest

from vibe_assets.query import (
    QueryError,
    QueryTerm,
    check_time_range,
    combine,
    combine_terms,
    describe_terms,
    normalize,
    parse_query,
    parse_time_bound,
    passes_min_score,
    result_row,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("beach", [("beach", 1.0)]),
        ("  a photo of a dog  ", [("a photo of a dog", 1.0)]),
        ("beach + sunset - people", [("beach", 1.0), ("sunset", 1.0), ("people", -1.0)]),
        ("beach+sunset", [("beach", 1.0), ("sunset", 1.0)]),
        ("beach -people", [("beach", 1.0), ("people", -1.0)]),
        ("- people", [("people", -1.0)]),
        ("-people", [("people", -1.0)]),
        ("  - people", [("people", -1.0)]),
        ("+ beach", [("beach", 1.0)]),
        ("2:dog + grass", [("dog", 2.0), ("grass", 1.0)]),
        ("2 : dog", [("dog", 2.0)]),
        ("0.5:a + .5:b - 2.:c", [("a", 0.5), ("b", 0.5), ("c", -2.0)]),
        ("- 3:cat", [("cat", -3.0)]),
        ("t-shirt", [("t-shirt", 1.0)]),
        (
            "black-and-white photo - 1950s sci-fi",
            [("black-and-white photo", 1.0), ("1950s sci-fi", -1.0)],
        ),
        ("beach- people", [("beach- people", 1.0)]),  # "-" after a letter is text
        ("dog + dog", [("dog", 1.0), ("dog", 1.0)]),
        ("a:b", [("a:b", 1.0)]),  # only a number before ":" is a weight
        ("10:30 pm", [("30 pm", 10.0)]),  # ... always (documented)
        ("café + 東京 - 😀", [("café", 1.0), ("東京", 1.0), ("😀", -1.0)]),
    ],
)
def test_parse_query(query: str, expected: list[tuple[str, float]]) -> None:
    assert parse_query(query) == [QueryTerm(text, weight) for text, weight in expected]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("beach +", "empty term"),
        ("beach -", "empty term"),
        ("a + + b", "empty term"),
        ("+ + b", "empty term"),
        ("+", "empty term"),
        ("2:", "empty term"),
        ("0:dog", "must be > 0"),
        ("beach + 0.0:sun", "must be > 0"),
    ],
)
def test_parse_query_errors(query: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(query)


def test_describe_terms() -> None:
    terms = [*parse_query("2:dog + grass - people"), QueryTerm("/x.jpg", 1.0, "image")]
    assert describe_terms(terms) == "+2 dog  +1 grass  -1 people  +1 image /x.jpg"


# -- arithmetic ---------------------------------------------------------------------------------


def _basis(d: int = 8) -> np.ndarray:
    return np.eye(d, dtype=np.float32)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([1.0], [1, 0, 0]),
        ([1.0, 1.0], [1, 1, 0]),
        ([1.0, 1.0, -1.0], [1, 1, -1]),
        ([2.0, 1.0], [2, 1, 0]),
        ([-1.0], [-1, 0, 0]),
        ([0.5, 0.0, 2.0], [0.5, 0, 2]),
    ],
)
def test_combine_is_the_normalised_weighted_sum(
    weights: list[float], expected: list[float]
) -> None:
    vectors = _basis(3)[: len(weights)]
    want = np.asarray(expected, dtype=np.float64)
    want /= np.linalg.norm(want)
    got = combine(vectors, weights)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_each_term_is_normalised_before_it_is_weighed() -> None:
    # a term embedded with a larger norm must not count more than its weight says
    a, b = np.array([10.0, 0.0]), np.array([0.0, 0.1])
    np.testing.assert_allclose(combine(np.stack([a, b]), [1, 1]), [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(
        combine(np.stack([a, b]), [1, 3]), np.array([1, 3]) / 10**0.5, atol=1e-6
    )


def test_composed_query_ranks_planted_vectors() -> None:
    """Planted images: "beach", "sunset", "beach at sunset", "beach with people", "people"."""
    rng = np.random.default_rng(0)
    beach, sunset, people = normalize(rng.normal(size=(3, 64)))
    images = {
        "beach": beach,
        "sunset": sunset,
        "beach_sunset": beach + sunset,
        "beach_people": beach + people,
        "beach_sunset_people": beach + sunset + 2 * people,
        "people": people,
    }
    names = list(images)
    matrix = normalize(np.stack([images[n] for n in names]))

    texts = {"beach": beach, "sunset": sunset, "people": people}

    def ranking(query: str) -> list[str]:
        terms = parse_query(query)
        q = combine_terms(terms, {t: texts[t.text] for t in terms})
        return [names[i] for i in np.argsort(-(matrix @ q))]

    assert ranking("beach")[0] == "beach"
    assert ranking("beach + sunset")[0] == "beach_sunset"
    top = ranking("beach + sunset - people")
    assert top[0] == "beach_sunset" and top[-1] == "people"
    assert top.index("beach_sunset_people") > top.index("beach")  # people pushed it down
    assert ranking("beach - people")[:2] == ["beach", "beach_sunset"]
    assert ranking("- people")[-1] == "people"
    # a weight moves the balance between two terms
    assert ranking("2:sunset + beach").index("sunset") < ranking("2:sunset + beach").index("beach")
    assert ranking("sunset + 2:beach").index("beach") < ranking("sunset + 2:beach").index("sunset")


@pytest.mark.parametrize(
    ("vectors", "weights", "message"),
    [
        (np.eye(2)[:1], [1.0, 1.0], "weights"),
        (np.zeros((0, 4)), [], "N >= 1"),
        (np.ones(4), [1.0], "N >= 1"),
        (np.zeros((1, 4)), [1.0], "zero"),
        (np.array([[np.nan, 1.0]]), [1.0], "not finite"),
        (np.stack([np.eye(3)[0], np.eye(3)[0]]), [1.0, -1.0], "cancel out"),
    ],
)
def test_combine_errors(vectors: np.ndarray, weights: list[float], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        combine(vectors, weights)


def test_combine_terms_needs_terms() -> None:
    with pytest.raises(QueryError, match="no terms"):
        combine_terms([], {})


# -- filters, rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01", "2024-05-01"),
        (" 2024-05-01 ", "2024-05-01"),
        ("2024-05-01T12:30", "2024-05-01T12:30:00"),
        ("2024-05-01 12:30:15", "2024-05-01T12:30:15"),
        ("2024-05-01T12:30:00+02:00", "2024-05-01T12:30:00+02:00"),
        ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00+00:00"),
    ],
)
def test_parse_time_bound(value: str, expected: str) -> None:
    assert parse_time_bound(value) == expected


@pytest.mark.parametrize("value", ["", "yesterday", "2024-13-01", "01/05/2024", "2024-05-01T25:00"])
def test_parse_time_bound_errors(value: str) -> None:
    with pytest.raises(QueryError, match="--before"):
        parse_time_bound(value, "--before")


@pytest.mark.parametrize(
    ("after", "before", "ok"),
    [
        (None, None, True),
        ("2024-01-01", None, True),
        ("2024-01-01", "2024-01-02", True),
        ("2024-01-02", "2024-01-01", False),
        ("2024-01-01", "2024-01-01", False),
        ("2024-01-01T10:00:00+02:00", "2024-01-01T09:00:00", True),  # 08:00 UTC < 09:00 UTC
    ],
)
def test_check_time_range(after: str | None, before: str | None, ok: bool) -> None:
    if ok:
        check_time_range(after, before)
    else:
        with pytest.raises(QueryError, match="not earlier"):
            check_time_range(after, before)


def test_result_row() -> None:
    payload = {
        "sha256": "ab" * 32,
        "paths": ["/p/a.jpg", "/q/a.jpg"],
        "caption": "a dog",
        "taken_at": "2024-05-01T12:00:00",
        "camera_model": "EOS R5",
        "camera_make": "Canon",
        "width": 10,
    }
    assert result_row(0.123456, payload) == {
        "score": 0.1235,
        "path": "/p/a.jpg",
        "paths": ["/p/a.jpg", "/q/a.jpg"],
        "sha256": "ab" * 32,
        "caption": "a dog",
        "taken_at": "2024-05-01T12:00:00",
        "camera": "EOS R5",
    }
    assert result_row(1, {}) == {
        "score": 1.0,
        "path": "?",
        "paths": [],
        "sha256": None,
        "caption": None,
    }


@pytest.mark.parametrize(
    ("score", "min_score", "kept"),
    [(0.3, None, True), (0.3, 0.3, True), (0.2999, 0.3, False), (-0.5, -0.6, True)],
)
def test_passes_min_score(score: float, min_score: float | None, kept: bool) -> None:
    assert passes_min_score(score, min_score) is kept

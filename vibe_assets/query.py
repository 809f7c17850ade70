"""Search queries: the composed-query grammar, the vector arithmetic, filters and result rows.

Dagster-free and model-free (numpy only), so the CLI and a web app share one definition of
what a query means. Encoding the texts and images is the caller's job
(:mod:`vibe_assets.text_encoder`, :class:`vibe_assets.resources.clip.ClipResource`).

Grammar of a text query (after rclip's ``horse + stripes``, ``apple - fruit``, ``2:cat``)::

    query  := [op] term (op term)*
    op     := "+" | "-"
    term   := [weight ":"] text
    weight := a decimal number > 0: "2", "0.5", ".5", "2."

- ``+`` always separates terms. ``-`` separates terms only where it starts the query or
  follows whitespace (``beach - people``, ``beach -people``, ``- people``); inside a word it
  is text (``t-shirt``, ``black-and-white``).
- A term without an operator before it (the first one) is added. Spaces around terms and
  weights are ignored. An empty term (``beach +``, ``a + + b``) is an error.
- ``W:`` at the start of a term weighs it (``2:dog + grass``: the dog counts twice); a term
  that starts with a number and a colon is always read as weighted (write ``at 10:30`` rather
  than ``10:30``).

Arithmetic: every term i is embedded and L2-normalised (e_i), then

    q = normalize( sum_i s_i * w_i * e_i )          s_i = +1 for "+" terms, -1 for "-" terms

so ``"beach + sunset - people"`` is ``normalize(e_beach + e_sunset - e_people)`` and
``"- people"`` is ``-e_people`` (the images least like people). rclip sums the same way and
ranks by the dot product with the unnormalised sum; normalising changes no ranking and keeps
cosine scores in [-1, 1], so ``--min-score`` means the same for every query. Image terms
(``--image``) are added the same way, weight 1. A query whose terms cancel out (``dog - dog``)
is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

ZERO_NORM = 1e-6
"""Below this L2 norm a combined query vector is "nothing" (its terms cancelled out)."""

_OPERATOR = re.compile(r"\+|(?:^|(?<=\s))-")
_WEIGHT = re.compile(r"^(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*:\s*(?P<text>.*)$", re.DOTALL)


class QueryError(ValueError):
    """A query, weight, date bound or option is invalid (the message says which and why)."""


@dataclass(frozen=True)
class QueryTerm:
    """One term of a query.

    Attributes:
        text: the text to embed, or the image path for ``kind == "image"``.
        weight: signed multiplier: positive for added terms, negative for subtracted ones.
        kind: ``"text"`` or ``"image"``.
    """

    text: str
    weight: float = 1.0
    kind: str = "text"


def parse_query(query: str) -> list[QueryTerm]:
    """The terms of a composed text query (see the module docstring for the grammar).

    Args:
        query: e.g. ``"beach + sunset - people"``, ``"2:dog + grass"``, ``"- people"``.

    Returns:
        The terms in order, each ``QueryTerm(text, signed weight, "text")``.

    Raises:
        QueryError: empty query, empty term, or a weight of 0.

    Example: ``parse_query("2:dog + grass - people")`` is
    ``[QueryTerm("dog", 2.0), QueryTerm("grass", 1.0), QueryTerm("people", -1.0)]``.
    """
    if not query.strip():
        raise QueryError("the query is empty")
    pieces: list[tuple[float, str]] = []
    sign, start = 1.0, 0
    for i, match in enumerate(_OPERATOR.finditer(query)):
        head = query[start : match.start()]
        if i > 0 or head.strip():  # a leading operator has no term before it
            pieces.append((sign, head))
        sign = 1.0 if match.group() == "+" else -1.0
        start = match.end()
    pieces.append((sign, query[start:]))
    terms = []
    for sign, raw in pieces:
        text = raw.strip()
        weight = 1.0
        weighted = _WEIGHT.match(text)
        if weighted:
            weight = float(weighted.group("weight"))
            text = weighted.group("text").strip()
            if weight <= 0:
                raise QueryError(f"weight {weighted.group('weight')!r} must be > 0 in {query!r}")
        if not text:
            raise QueryError(
                f"empty term in query {query!r} (two operators in a row, or one at the end?)"
            )
        terms.append(QueryTerm(text, sign * weight))
    return terms


def describe_terms(terms: Sequence[QueryTerm]) -> str:
    """One line that shows how a query was read, e.g. ``+2 dog  +1 grass  -1 people``."""
    parts = []
    for term in terms:
        what = f"image {term.text}" if term.kind == "image" else term.text
        parts.append(f"{'+' if term.weight >= 0 else '-'}{abs(term.weight):g} {what}")
    return "  ".join(parts)


def normalize(vector: np.ndarray) -> np.ndarray:
    """``vector / ||vector||`` as float32 (any shape ``(..., D)``, rows normalised).

    Raises:
        QueryError: a row has a norm below :data:`ZERO_NORM` or is not finite.
    """
    v = np.asarray(vector, dtype=np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms < ZERO_NORM):
        raise QueryError("the query vector is zero or not finite (do its terms cancel out?)")
    return (v / norms).astype(np.float32)


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The query vector ``normalize(sum_i weights[i] * normalize(vectors[i]))``.

    Args:
        vectors: ``(N, D)`` embeddings of the N terms (any norm; each is normalised first).
        weights: N signed weights (:attr:`QueryTerm.weight`).

    Returns:
        ``(D,) float32``, L2 norm 1.

    Raises:
        QueryError: no terms, a count or shape mismatch, a zero or non-finite term, or terms
            that cancel out (``dog - dog``).
    """
    matrix = np.asarray(vectors, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise QueryError(f"need (N, D) term vectors with N >= 1, got shape {matrix.shape}")
    if w.shape != (matrix.shape[0],):
        raise QueryError(f"{matrix.shape[0]} term vectors but {w.size} weights")
    unit = normalize(matrix).astype(np.float64)
    return normalize(w @ unit)


def combine_terms(
    terms: Sequence[QueryTerm], embedded: Mapping[QueryTerm, np.ndarray]
) -> np.ndarray:
    """:func:`combine` over ``terms`` with their embeddings looked up in ``embedded``.

    Returns:
        ``(D,) float32``, L2 norm 1.

    Raises:
        QueryError: as :func:`combine`; KeyError: a term has no embedding.
    """
    if not terms:
        raise QueryError("the query has no terms")
    return combine(np.stack([embedded[t] for t in terms]), [t.weight for t in terms])


def parse_time_bound(value: str, option: str = "--after") -> str:
    """A ``taken_at`` bound as ISO 8601 text (``2024-05-01`` or ``2024-05-01T12:00[:00][+02:00]``).

    Bounds compare with the photo's EXIF capture time as the vector store does
    (:class:`~vibe_assets.vectors.base.PointFilter`): ``--after`` is inclusive
    (``taken_at >= bound``), ``--before`` exclusive (``taken_at < bound``); a bound or a
    ``taken_at`` without a zone is read as UTC, and a date is its midnight.

    Raises:
        QueryError: not an ISO date or date-time (the message names ``option``).
    """
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(
            f"{option} {value!r} is not an ISO date (YYYY-MM-DD) or date-time "
            "(YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return text
    return parsed.isoformat()


def check_time_range(after: str | None, before: str | None) -> None:
    """Refuse a range that no capture time can be in (``--after`` not earlier than ``--before``).

    Raises:
        QueryError: both bounds are set and ``after >= before`` (compared as UTC instants).
    """
    if after is None or before is None:
        return
    from datetime import UTC

    def instant(text: str) -> datetime:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    if instant(after) >= instant(before):
        raise QueryError(f"--after {after} is not earlier than --before {before}: nothing matches")


def result_row(score: float, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON row of a hit: ``score`` (rounded to 4 decimals), ``path`` (the first path),
    ``paths``, ``sha256``, ``caption`` (None when not captioned) and, when the payload has
    them, ``taken_at`` (ISO 8601 text as read from EXIF) and ``camera`` (the EXIF model)."""
    paths = list(payload.get("paths") or [])
    row: dict[str, Any] = {
        "score": round(float(score), 4),
        "path": paths[0] if paths else "?",
        "paths": paths,
        "sha256": payload.get("sha256"),
        "caption": payload.get("caption"),
    }
    if payload.get("taken_at"):
        row["taken_at"] = payload["taken_at"]
    if payload.get("camera_model"):
        row["camera"] = payload["camera_model"]
    return row


def passes_min_score(score: float, min_score: float | None) -> bool:
    """True when a hit's ``score`` (cosine or dot: higher is closer) is at least ``min_score``
    (always true when ``min_score`` is None)."""
    return min_score is None or score >= min_score

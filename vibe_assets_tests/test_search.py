"""`vibe-assets search` on a small ingested library (tiny CLIP): image queries, composed text
queries, filters, --min-score, JSON rows, and a cold text search that never imports torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from vibe_assets.cli import main
from vibe_assets.hashing import sha256_file
from vibe_assets.resources.clip import ClipResource
from vibe_assets_tests.conftest import TINY_CLIP, use_home

# name -> (folder, camera model, EXIF DateTime): a2 has no EXIF at all
PHOTOS = {
    "a0": ("a", "CamA", "2023:06:01 10:00:00"),
    "a1": ("a", "CamB", "2024:02:10 09:00:00"),
    "a2": ("a", None, None),
    "b0": ("b", "CamA", "2024:08:15 18:30:00"),
    "b1": ("b", "CamB", "2022:12:31 23:59:59"),
}


def _photo(path: Path, seed: int, camera: str | None, when: str | None) -> None:
    """A JPEG with coarse random colour blocks (distinct CLIP embeddings) and optional EXIF."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize((160, 120), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    if camera:
        exif[0x0110] = camera  # Model
    if when:
        exif[0x0132] = when  # DateTime
    image.save(path, "JPEG", quality=92, exif=exif.tobytes())


@dataclass
class Library:
    root: Path
    home: Path
    checkpoint: Path
    shas: dict[str, str]  # photo name -> sha256
    keys: dict[str, str]  # folder name -> partition key
    vectors: dict[str, np.ndarray]  # sha256 -> stored (D,) vector

    def search(self, *args: str) -> Any:
        result = CliRunner().invoke(main, ["search", *args])
        return result

    def rows(self, *args: str) -> list[dict[str, Any]]:
        result = self.search(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def names(self, *args: str) -> list[str]:
        by_sha = {sha: name for name, sha in self.shas.items()}
        return [by_sha[r["sha256"]] for r in self.rows(*args, "--limit", "20")]


@pytest.fixture(scope="module")
def library(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_checkpoint: Path
) -> Iterator[Library]:
    tmp = tmp_path_factory.mktemp("search")
    patch = pytest.MonkeyPatch()
    home = use_home(patch, tmp / "home", tiny_clip_checkpoint)
    root = tmp / "lib"
    shas = {}
    for seed, (name, (folder, camera, when)) in enumerate(PHOTOS.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        _photo(root / folder / f"{name}.jpg", seed, camera, when)
        shas[name] = sha256_file(str(root / folder / f"{name}.jpg"))
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(root / "a"), str(root / "b"), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    keys = {Path(s["folder"]).name: s["partition"] for s in json.loads(result.stdout)}
    from vibe_assets.vectors.edge import EdgeVectorStore

    with EdgeVectorStore(home / "vectors") as store:
        points = list(store.scroll("photos", with_vectors=True))
    vectors = {p.payload["sha256"]: p.vector for p in points}
    assert len(vectors) == 5
    yield Library(root, home, tiny_clip_checkpoint, shas, keys, vectors)
    patch.undo()


def _expected_ranking(lib: Library, query_vector: np.ndarray) -> list[tuple[str, float]]:
    by_sha = {sha: name for name, sha in lib.shas.items()}
    scores = {by_sha[sha]: float(v @ query_vector) for sha, v in lib.vectors.items()}
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _texts(lib: Library, *texts: str) -> np.ndarray:
    return ClipResource(model_name=TINY_CLIP, weights=str(lib.checkpoint)).encode_texts(list(texts))


# -- image queries ------------------------------------------------------------------------------


def test_an_ingested_image_searched_by_itself_comes_first_without_the_model(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(self: ClipResource) -> None:
        raise AssertionError("the model was loaded for an image the collection holds")

    monkeypatch.setattr(ClipResource, "load", no_model)
    for name, (folder, _, _) in PHOTOS.items():
        rows = library.rows("--image", str(library.root / folder / f"{name}.jpg"), "--limit", "3")
        assert rows[0]["sha256"] == library.shas[name]
        assert rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert rows[1]["score"] < rows[0]["score"] - 1e-3


def test_a_new_image_is_decoded_like_ingest_and_embedded(library: Library, tmp_path: Path) -> None:
    # The same pixels in another file (PNG: other bytes, other SHA-256): not in the collection,
    # so it is decoded and embedded by the model, and finds its JPEG twin with score ~1.
    twin = tmp_path / "twin.png"
    with Image.open(library.root / "b" / "b0.jpg") as im:
        im.convert("RGB").save(twin)
    assert sha256_file(str(twin)) not in library.vectors
    rows = library.rows("--image", str(twin), "--limit", "2")
    assert rows[0]["sha256"] == library.shas["b0"]
    assert rows[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert rows[1]["score"] < rows[0]["score"] - 1e-3


def test_image_plus_text_adds_the_unit_vectors(library: Library) -> None:
    image = library.vectors[library.shas["a1"]]
    text = _texts(library, "sunset")[0]
    q = image / np.linalg.norm(image) + 2 * text
    expected = _expected_ranking(library, q / np.linalg.norm(q))
    rows = library.rows("2:sunset", "--image", str(library.root / "a" / "a1.jpg"))
    got = [(r["score"]) for r in rows]
    np.testing.assert_allclose(got, [s for _, s in expected], atol=2e-4)


# -- composed text queries ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "weights", "texts"),
    [
        ("beach + sunset - people", [1, 1, -1], ["beach", "sunset", "people"]),
        ("2:dog + grass", [2, 1], ["dog", "grass"]),
        ("- people", [-1], ["people"]),
        ("red car -0.5:night", [1, -0.5], ["red car", "night"]),
        ("t-shirt", [1], ["t-shirt"]),
    ],
)
def test_composed_query_ranks_by_the_documented_vector(
    library: Library, query: str, weights: list[float], texts: list[str]
) -> None:
    e = _texts(library, *texts)
    q = (np.asarray(weights, dtype=np.float64)[:, None] * e).sum(0)
    expected = _expected_ranking(library, q / np.linalg.norm(q))
    rows = library.rows(query, "--limit", "5")
    by_sha = {sha: name for name, sha in library.shas.items()}
    assert [by_sha[r["sha256"]] for r in rows] == [name for name, _ in expected]
    np.testing.assert_allclose([r["score"] for r in rows], [s for _, s in expected], atol=2e-4)


def test_a_minus_query_reverses_the_plain_ranking(library: Library) -> None:
    plain = library.names("people")
    assert library.names("- people") == plain[::-1]


# -- filters, min score, JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--folder", "KEY:a"], {"a0", "a1", "a2"}),
        (["--folder", "PATH:b"], {"b0", "b1"}),
        (["--folder", "PATH:"], {"a0", "a1", "a2", "b0", "b1"}),  # the root: folders below it
        (["--folder", "KEY:a", "--folder", "KEY:b"], {"a0", "a1", "a2", "b0", "b1"}),
        (["--after", "2024-01-01"], {"a1", "b0"}),
        (["--before", "2024-01-01"], {"a0", "b1"}),
        (["--after", "2023-01-01", "--before", "2024-03-01"], {"a0", "a1"}),
        (["--after", "2024-08-15T18:30:00"], {"b0"}),  # inclusive
        (["--before", "2024-08-15T18:30:00", "--after", "2024-08-01"], set()),  # exclusive
        (["--camera", "CamA"], {"a0", "b0"}),
        (["--camera", "CamA", "--camera", "CamB"], {"a0", "a1", "b0", "b1"}),
        (["--camera", "CamB", "--folder", "KEY:a"], {"a1"}),
        (["--camera", "camb"], set()),  # exact EXIF text
    ],
)
def test_filters_restrict_the_hits(library: Library, args: list[str], expected: set[str]) -> None:
    resolved = []
    for arg in args:
        if arg.startswith("KEY:"):
            arg = library.keys[arg[4:]]
        elif arg.startswith("PATH:"):
            arg = str(library.root / arg[5:])
        resolved.append(arg)
    assert set(library.names("a photo", *resolved)) == expected


def test_min_score_cuts_the_tail(library: Library) -> None:
    rows = library.rows("a photo", "--limit", "5")
    assert len(rows) == 5
    cut = (rows[1]["score"] + rows[2]["score"]) / 2
    kept = library.rows("a photo", "--limit", "5", "--min-score", f"{cut:.6f}")
    assert [r["sha256"] for r in kept] == [r["sha256"] for r in rows[:2]]
    assert library.rows("a photo", "--min-score", "1.01") == []


def test_json_rows(library: Library) -> None:
    rows = {r["sha256"]: r for r in library.rows("a photo", "--limit", "5")}
    base = {"score", "path", "paths", "sha256", "caption"}
    for name, (folder, camera, when) in PHOTOS.items():
        row = rows[library.shas[name]]
        path = str((library.root / folder / f"{name}.jpg").resolve())
        assert row["path"] == path and row["paths"] == [path] and row["caption"] is None
        assert isinstance(row["score"], float)
        if camera is None:
            assert set(row) == base
        else:
            assert set(row) == base | {"taken_at", "camera"}
            assert row["camera"] == camera
            assert row["taken_at"] == when.replace(":", "-", 2).replace(" ", "T")


def test_human_output_says_how_a_composed_query_was_read(library: Library) -> None:
    result = library.search("2:dog + grass - people", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "query: +2 dog  +1 grass  -1 people" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a QUERY"),
        (["beach +"], "empty term"),
        (["0:beach"], "must be > 0"),
        (["dog - dog"], "cancel out"),
        (["a photo", "--after", "last week"], "--after 'last week' is not an ISO date"),
        (["a photo", "--after", "2024-05-01", "--before", "2024-01-01"], "not earlier"),
        (["a photo", "--folder", "/no/such/folder"], "no registered folder"),
    ],
)
def test_usage_errors_exit_2(library: Library, args: list[str], message: str) -> None:
    result = library.search(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


# -- a cold text search -------------------------------------------------------------------------

COLD_SEARCH = """
import json, pickle, sys

def refuse(*args, **kwargs):
    raise AssertionError("a pickle was loaded")

pickle.load = pickle.loads = pickle.Unpickler = refuse
from vibe_assets.cli import main

try:
    main.main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in ("torch", "open_clip", "transformers", "onnx")
                            if m in sys.modules)), file=sys.stderr)
"""


def test_a_cold_text_search_never_imports_torch(library: Library) -> None:
    warm = library.rows("beach + sunset - people")  # exported by now (this process has torch)
    assert any((library.home / "models" / "text").iterdir())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", COLD_SEARCH, "search", "beach + sunset - people", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    imported = json.loads(proc.stderr.strip().splitlines()[-1])
    assert imported == []
    assert json.loads(proc.stdout) == warm


def test_the_old_path_gives_the_same_hits(
    library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = library.rows("beach + sunset - people")
    monkeypatch.setenv("VIBE_TEXT_ENCODER", "torch")
    old = library.rows("beach + sunset - people")
    assert [r["sha256"] for r in old] == [r["sha256"] for r in fast]
    np.testing.assert_allclose([r["score"] for r in old], [r["score"] for r in fast], atol=2e-4)


def test_a_deleted_export_is_made_again(library: Library) -> None:
    shutil.rmtree(library.home / "models" / "text")
    result = library.search("beach", "--json")
    assert result.exit_code == 0, result.output
    assert "exporting the CLIP text tower" in result.stderr
    assert any((library.home / "models" / "text").iterdir())

"""Folder keys and the folder registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_assets.partitions import FolderError, FolderRegistry, folder_key, is_valid_key


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Holidays 2024", "holidays_2024"),
        ("Été à Paris", "t_paris"),
        ("a/b", None),  # a nested path: only the last part counts
        ("..", None),
        ("[x],|y|", "x_y"),
        ("日本", "folder"),
    ],
)
def test_folder_key_is_slug_plus_hash(tmp_path: Path, name: str, slug: str | None) -> None:
    path = tmp_path / name
    key = folder_key(path)
    assert is_valid_key(key), key
    if slug is not None:
        assert key.rsplit("-", 1)[0] == slug
    assert key == folder_key(path)  # deterministic
    assert key != folder_key(tmp_path / "other" / name)  # same name elsewhere: another key


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s))
def test_any_folder_name_gives_a_safe_key(name: str) -> None:
    key = folder_key(Path("/photos") / name.replace("/", "_"))
    assert is_valid_key(key) and ".." not in key and "/" not in key


def test_registry_add_list_remove(tmp_path: Path) -> None:
    registry = FolderRegistry(tmp_path / "state.sqlite3")
    folder = tmp_path / "My Photos"
    folder.mkdir()
    added = registry.add(folder)
    assert added.path == folder.resolve() and added.key == folder_key(folder)
    assert registry.add(folder).key == added.key  # idempotent
    assert [f.key for f in registry.list()] == [added.key]
    assert registry.path_for(added.key) == folder.resolve()
    assert registry.find(str(folder)) == registry.find(added.key) == added
    # SQL is parameterized: a hostile key is just a missing key.
    assert registry.get("x' OR '1'='1") is None
    assert registry.remove(added.key) and not registry.remove(added.key)
    with pytest.raises(FolderError, match="no folder is registered"):
        registry.path_for(added.key)


def test_registry_rejects_missing_and_non_directories(tmp_path: Path) -> None:
    registry = FolderRegistry(tmp_path / "state.sqlite3")
    with pytest.raises(FolderError, match="does not exist"):
        registry.add(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(FolderError, match="not a directory"):
        registry.add(tmp_path / "file.jpg")
    assert registry.list() == []


def test_sensor_folders_are_not_recursive(tmp_path: Path) -> None:
    from PIL import Image

    from vibe_assets.scan import scan_folder

    parent = tmp_path / "lib"
    (parent / "child").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(parent / "a.jpg")
    Image.new("RGB", (8, 8)).save(parent / "child" / "b.jpg")
    registry = FolderRegistry(tmp_path / "state.sqlite3")
    folders, failures = registry.add_many([parent, parent / "child"], recursive=False)
    assert not failures and [f.recursive for f in folders] == [False, False]
    assert registry.add(parent).recursive is False  # an existing entry is kept as it is
    direct = scan_folder(parent, recursive=False)
    assert [Path(f.path).name for f in direct.files] == ["a.jpg"]
    assert [Path(f.path).name for f in scan_folder(parent).files] == ["a.jpg", "b.jpg"]

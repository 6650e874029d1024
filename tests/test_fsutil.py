"""Atomic writes: nothing partial on failure, and the mode a plain open() would give."""

import os
import stat

import pytest

from feredge.edge.fsutil import atomic_path, atomic_write_bytes, publish, staging_dir


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == mode


def test_failure_leaves_neither_target_nor_temp(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.mp4", suffix=".mp4") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_target_is_kept_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new, but never finished")
        raise RuntimeError
    assert target.read_text() == "old"
    atomic_write_bytes(target, b"new")
    assert target.read_text() == "new"


def test_a_published_folder_replaces_the_old_one_whole(tmp_path):
    """The bundle is published this way: no file of the old folder survives, nothing is left aside."""
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "stale.whl").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("beside it")
    with staging_dir(tmp_path) as scratch:
        (scratch / "bundle").mkdir()
        (scratch / "bundle" / "bundle.json").write_text("{}")
        publish(scratch, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "keep.txt"]
    assert [p.name for p in (tmp_path / "bundle").iterdir()] == ["bundle.json"]

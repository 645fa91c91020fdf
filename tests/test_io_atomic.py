"""io/atomic.py: a failed write leaves the old content and no temporary; a finished one replaces it whole."""

import pytest

from cosmos_nemo.io.atomic import atomic_dir, atomic_path, atomic_write_text, is_temporary


def test_text_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "pointer.txt"
    atomic_write_text(target, "a\n")
    atomic_write_text(target, "b\n")
    assert target.read_text() == "b\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["pointer.txt"]


def test_failed_writer_keeps_old_content(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert is_temporary(tmp) and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        with atomic_path(tmp_path / "y"):
            pass
    assert not list(tmp_path.iterdir())


def test_no_overwrite(tmp_path):
    (tmp_path / "z").write_text("keep")
    with pytest.raises(FileExistsError):
        with atomic_path(tmp_path / "z", overwrite=False) as tmp:
            tmp.write_text("new")
    assert (tmp_path / "z").read_text() == "keep"


def test_dir_appears_only_when_complete(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("1")
            raise ValueError("stop")
    assert not final.exists() and not list(tmp_path.iterdir())
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    assert (final / "a").read_text() == "1"
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_dir(final):
            pass
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]

"""Atomic writes: complete files appear under their name, failures leave nothing."""

import os
import stat

import numpy as np
import pytest

from cortexflow import _io


def test_atomic_write_publishes_complete_files_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "x.npy"
    _io.save_npy(target, np.arange(5))
    assert np.array_equal(np.load(target), np.arange(5))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["x.npy"]


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary(tmp_path):
    target = tmp_path / "betas.nii.gz"
    with pytest.raises(RuntimeError):
        with _io.atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_old_folder_only_when_the_new_one_is_complete(tmp_path):
    target = tmp_path / "figures"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _io.atomic_dir(target) as tmp:
            (tmp / "new.png").write_bytes(b"new")
            raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["old.png"]
    with _io.atomic_dir(target) as tmp:
        (tmp / "new.png").write_bytes(b"new")
    assert [p.name for p in target.iterdir()] == ["new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]

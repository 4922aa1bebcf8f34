"""files.py: atomic writes, permissions, leftovers, output checks and run locks."""

import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO

from scratchgpt.files import (
    UserError,
    atomic_file,
    check_output,
    check_size,
    exclusive_lock,
    remove_stale_temps,
    signals_held,
    unreadable_reason,
    user_path,
)


def test_an_interrupted_atomic_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(OSError), atomic_file(path) as f:
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_file(tmp_path / "file") as f:
            f.write(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o666 & ~umask


def test_stale_temporaries_of_one_path_are_removed_and_others_kept(tmp_path):
    (tmp_path / "run.pt.a1b2c3d4.tmp").write_bytes(b"left by a killed save")
    (tmp_path / "other.pt.a1b2c3d4.tmp").write_bytes(b"another checkpoint's")
    (tmp_path / "run.pt.notes.tmp").write_bytes(b"not ours: not 8 characters")
    (tmp_path / "run.pt.corpus00.tmp").write_bytes(b"the user's corpus, named like a temporary")
    remove_stale_temps(tmp_path / "run.pt", keep=[tmp_path / "run.pt.corpus00.tmp"])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["other.pt.a1b2c3d4.tmp", "run.pt.corpus00.tmp", "run.pt.notes.tmp"]


def test_unreadable_reasons_name_links_and_folders(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "file").write_text("x")
    assert unreadable_reason(tmp_path / "loop") == "is a symbolic link loop"
    assert "which does not exist" in unreadable_reason(tmp_path / "dangling")
    assert unreadable_reason(tmp_path / "missing") == "not found"
    assert unreadable_reason(tmp_path) == "is a folder, not a file"
    assert unreadable_reason(tmp_path / "file") is None


def test_devices_and_pipes_are_not_read_as_files(tmp_path):
    # /dev/zero would be read until memory runs out, a pipe with no writer waits for ever.
    os.mkfifo(tmp_path / "pipe")
    for path in (Path("/dev/zero"), tmp_path / "pipe"):
        assert unreadable_reason(path).startswith("is not a regular file"), path


def test_a_new_file_is_never_created_over_one_that_appeared_meanwhile(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(FileExistsError), atomic_file(path, replace=False) as f:
        f.write(b"ours")
        path.write_text("another program's")  # between the start's check and our rename
    assert path.read_text() == "another program's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_file(tmp_path / "new.txt", replace=False) as f:
        f.write(b"ours")
    assert (tmp_path / "new.txt").read_text() == "ours"


def test_a_lock_whose_folder_vanished_lets_the_real_error_through(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(KeyError, match="the real error") as raised:
        with exclusive_lock(folder / "run.pt", "checkpoint"):
            shutil.rmtree(folder)
            folder.write_text("a file where the folder was")
            raise KeyError("the real error")
    assert raised.value.__context__ is None  # no second error from removing the lock


def test_an_output_may_not_be_an_input_even_through_a_link(tmp_path):
    corpus = tmp_path / "input.txt"
    corpus.write_text("keep me")
    (tmp_path / "alias.txt").symlink_to(corpus)
    with pytest.raises(UserError, match="is the corpus"):
        check_output(tmp_path / "alias.txt", "checkpoint", {"the corpus": corpus})
    assert corpus.read_text() == "keep me"


@pytest.mark.parametrize(
    "name, message",
    [
        ("a.txt/run.pt", "a.txt is a file, not a folder"),
        ("folder", "is a folder"),
        ("x" * 250 + ".pt", "File name too long"),
    ],
)
def test_outputs_that_cannot_be_written_are_found_before_any_work(tmp_path, name, message):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match=message):
        check_output(tmp_path / name, "checkpoint", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]  # no probe left


HOLD_LOCK = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from scratchgpt.files import exclusive_lock
with exclusive_lock(Path(sys.argv[1]), "checkpoint"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_lock_is_exclusive_and_a_killed_holder_leaves_it_free(tmp_path):
    path = tmp_path / "run.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(REPO)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError, match="in use by another run"), exclusive_lock(path, "x"):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with exclusive_lock(path, "checkpoint"):  # the kernel released the dead holder's lock
        assert (tmp_path / "run.pt.lock").exists()
    assert (tmp_path / "run.pt.lock").exists()  # the dead holder's file, not ours to remove


def test_a_lock_never_changes_a_file_that_has_its_name(tmp_path):
    (tmp_path / "notes.txt.lock").write_text("the user's own file")
    with exclusive_lock(tmp_path / "notes.txt", "checkpoint"):
        pass
    assert (tmp_path / "notes.txt.lock").read_text() == "the user's own file"


def test_a_lock_file_this_process_created_is_removed_afterwards(tmp_path):
    with exclusive_lock(tmp_path / "run.pt", "checkpoint"):
        assert (tmp_path / "run.pt.lock").exists()
    assert not (tmp_path / "run.pt.lock").exists()


@pytest.mark.parametrize("name", ["n" * 300, "/".join(["folder"] * 700)])  # 300 bytes; 4,900
def test_a_name_too_long_for_the_file_system_is_one_clear_error(tmp_path, name):
    with pytest.raises(UserError, match="--out .*: the name is longer than the file system allows"):
        user_path(str(tmp_path / name), "--out", output_example="run.pt")


def test_a_name_ending_in_a_slash_is_a_folder_not_a_file(tmp_path):
    with pytest.raises(
        UserError, match="--out runs/ is a folder; give a file path such as runs/run.pt"
    ):
        user_path("runs/", "--out", output_example="run.pt")
    assert user_path("runs/", "--data") == Path("runs")  # an input: its reader says what it is


def test_an_output_that_is_a_link_to_nothing_is_refused(tmp_path):
    (tmp_path / "sample.txt").symlink_to(tmp_path / "gone" / "target.txt")
    with pytest.raises(UserError, match="symbolic link to .*target.txt, which does not exist"):
        user_path(str(tmp_path / "sample.txt"), "--output", output_example="sample.txt")
    assert not (tmp_path / "gone").exists()


def test_a_sparse_terabyte_is_refused_by_its_size_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as f:
        f.truncate(1 << 40)  # takes no disk
    with pytest.raises(UserError, match=f"corpus {huge} is 1,099,511,627,776 bytes, more than"):
        check_size(huge, "corpus", 4 << 30)


def test_a_signal_during_a_save_takes_effect_when_the_save_ends(tmp_path):
    done, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered at once
            done.append("the rest of the save")
    assert done == ["the rest of the save"]
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_lock_name_that_is_a_link_is_refused_and_kept(tmp_path):
    lock = tmp_path / "run.pt.lock"
    lock.symlink_to(tmp_path / "nowhere" / "target")
    with pytest.raises(UserError, match="run.pt.lock is a symbolic link: move it away"):
        with exclusive_lock(tmp_path / "run.pt", "checkpoint"):
            pass
    assert lock.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_write_through_a_link_replaces_the_file_it_names_and_keeps_the_link(tmp_path):
    (tmp_path / "real.pt").write_text("old")
    (tmp_path / "run.pt").symlink_to("real.pt")
    with atomic_file(tmp_path / "run.pt") as f:
        f.write(b"new")
    assert (tmp_path / "run.pt").is_symlink() and (tmp_path / "real.pt").read_text() == "new"

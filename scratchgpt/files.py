"""What ScratchGPT promises about your files, in one place.

- Every file it writes appears whole or not at all (atomic_file), with the permissions your
  umask gives, like any other file you create. A file that must be new is created in the same
  step that checks that the name is free (replace=False), so two writers never both succeed.
- A path it writes is checked before any work starts: its folder exists (or can be made) and
  can be written, and it is none of the run's inputs (check_output). A path you type that ends
  in a slash names a folder, and one too long for the file system is refused (user_path).
- The model shipped with ScratchGPT (pretrained/) is read by every command and written by none.
- Two runs never write the same checkpoint: the first holds a lock (exclusive_lock) that the
  operating system releases when the process ends, even when it is killed.
- Temporary files that a killed run left behind are removed by the next run on the same path.
- Ctrl-C or SIGTERM during a save takes effect when the save ends (signals_held).
- A checkpoint whose pickle would run code is named as such (pickled_imports).

The console a command prints to is set up in cli.py (setup_console).
"""

import errno
import glob
import os
import pickletools
import signal
import stat
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from scratchgpt.cli import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


# The folder of the model shipped with the repository: no command writes into it.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def is_shipped(path: Path) -> bool:
    """True when path is in the shipped model's folder (through links too)."""
    try:
        return path.resolve().is_relative_to(SHIPPED_DIR.resolve())
    except (OSError, RuntimeError):  # a name too long, a symbolic link loop: not in the folder
        return False


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def temp_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside path, named path.name + '.XXXXXXXX.tmp' (so that it is known
    to belong to path), with the mode open() would give it rather than mkstemp's 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


@contextmanager
def atomic_file(path: Path, replace: bool = True) -> Iterator[BinaryIO]:
    """Write to a temporary file beside path, renamed to path only once the block completes:
    an interrupted write never looks like a finished file, and the old file stays until then.
    With replace=False, FileExistsError if path exists by then (see commit_new). A link at path
    stays a link: the file it names is the one replaced."""
    if replace and path.is_symlink():
        path = Path(os.path.realpath(path))
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            commit_new(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit_new(tmp: str, path: Path) -> None:
    """Give the finished file tmp the name path, which must be free: a hard link refuses an
    existing name, so the check and the creation are one step (FileExistsError otherwise)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name first, then fill it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~current_umask()))
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(path).unlink(missing_ok=True)  # the empty claim, not a file anybody wrote
            raise
        return
    os.unlink(tmp)


def remove_stale_temps(path: Path, keep: list[Path]) -> None:
    """Delete the temporary files of atomic_file(path) that a killed process left behind, except
    the files in keep (the run's inputs, whatever their names). Call it only while holding path's
    lock: then no live process is writing them."""
    for tmp in path.parent.glob(glob.escape(path.name) + ".????????.tmp"):
        if tmp.is_file() and not any(same_file(tmp, k) for k in keep):
            tmp.unlink(missing_ok=True)


def user_path(text: str, what: str, output_example: str | None = None) -> Path:
    """A path the user typed, checked before anything touches it. A name longer than the file
    system takes is one clear error, not errno 36 from the first stat. Given output_example (the
    path names a file to write), a name ending in a slash names a folder (Path would drop the
    slash and write a file of that name), and a link to nothing is refused rather than followed
    to create its target."""
    path = Path(text)
    if output_example is not None and text.endswith(("/", os.sep)):
        raise UserError(
            f"{what} {text} is a folder; give a file path such as {path / output_example}"
        )
    try:
        os.lstat(path)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            shown = (
                text if len(text) <= 60 else f"{text[:40]}... ({len(os.fsencode(text)):,} bytes)"
            )
            raise UserError(
                f"{what} {shown}: the name is longer than the file system allows"
            ) from None
    if output_example is not None and path.is_symlink() and not path.exists():
        raise UserError(
            f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist: "
            "remove the link, or give another path"
        )
    return path


def unreadable_reason(path: Path) -> str | None:
    """Why path cannot be read as a file, in a few words; None when it can be."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return e.strerror or type(e).__name__
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):  # /dev/zero never ends; a pipe with no writer never answers
        return "is not a regular file (a device, pipe or socket): save the text to a file first"
    return None


def check_size(path: Path, what: str, max_bytes: int) -> None:
    """Refuse a file larger than its reader can hold: a sparse 1 TiB file takes no disk, and
    reading it would fill the memory before anything could be said."""
    size = path.stat().st_size
    if size > max_bytes:
        raise UserError(f"{what} {path} is {size:,} bytes, more than the {max_bytes:,} it may be")


def same_file(a: Path, b: Path) -> bool:
    """True when a and b name one file (through links too), whether or not it exists yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        pass
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return os.path.abspath(a) == os.path.abspath(b)


def check_output(path: Path, what: str, inputs: dict[str, Path]) -> None:
    """Fail now rather than at the first save: path is none of the inputs, and it can be written.

    inputs maps a description ("the corpus (--data)") to the path it names.
    """
    check_not_input(path, what, inputs)
    check_writable(path, what)


def check_new_output(
    text: str, what: str, inputs: dict[str, Path], overwrite: bool, example: str
) -> Path:
    """A file a command writes when it is done, named by the user (text), checked before the work
    starts: its folder exists (none is made), it is none of the inputs, it can be written, and it
    is new unless overwrite. example: a file name to suggest for a path naming a folder."""
    path = user_path(text, what, output_example=example)
    if not path.parent.is_dir():
        raise UserError(f"{what}: folder {path.parent} does not exist")
    check_output(path, what, inputs)
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path} exists: pass --overwrite to replace it")
    return path


def check_not_input(path: Path, what: str, inputs: dict[str, Path]) -> None:
    for description, source in inputs.items():
        if same_file(path, source):
            raise UserError(f"{what} {path} is {description}: writing it would destroy it")


def check_writable(path: Path, what: str, named_by_user: bool = True) -> None:
    """path's folder exists (or is made) and a file with path's name (plus atomic_file's suffix)
    can be created there. A path the program derived from another (named_by_user False) gets
    no advice on what to type instead."""
    if is_shipped(path):
        raise UserError(
            f"{what} {path} is in {SHIPPED_DIR}, the model shipped with ScratchGPT, which no "
            "command writes: give a path in checkpoints/ or elsewhere"
        )
    if path.is_dir() and named_by_user:
        raise UserError(f"{what} {path} is a folder; give a file path such as {path / 'run.pt'}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: move it away to let the run write its file")
    if path.exists() and not path.is_file():
        raise UserError(f"{what} {path} exists and is not a regular file")
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file(path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror}") from None


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them: a save they interrupted
    would end in a traceback from deep inside the writer. Where signals cannot be caught (not the
    main thread), the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):  # each once, in the order they came
            signal.raise_signal(sig)


def _try_lock(f) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            import msvcrt

            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def lock_path(path: Path) -> Path:
    """The lock file of path: path + '.lock'."""
    return path.with_name(path.name + ".lock")


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold a lock on lock_path(path) while the block runs; another process asking for it
    meanwhile gets a UserError. The operating system drops the lock when its holder ends, however
    it ends, so a killed run never leaves a path locked for good. The lock file is only opened,
    never written; it is removed afterwards only if this process created it."""
    lock = lock_path(path)
    if lock.is_symlink():  # opening would create or lock the link's target, and unlink the link
        raise UserError(f"{lock} is a symbolic link: move it away to use {what} {path}")
    if lock.exists() and not lock.is_file():  # a pipe would block the open below
        raise UserError(f"{lock} is not a regular file: move it away to use {what} {path}")
    while True:
        created = not lock.exists()
        try:
            f = lock.open("a")
        except OSError as e:
            raise UserError(f"cannot write {what} {path}: {e.strerror}") from None
        if not _try_lock(f):
            f.close()
            raise UserError(
                f"{what} {path} is in use by another run (it holds {lock}); "
                "wait for it to finish, or use another path"
            )
        try:  # the previous holder may have removed the file between our open and our lock
            if os.path.samestat(os.fstat(f.fileno()), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        if created:  # before releasing it, so that nobody locks a removed file
            try:
                lock.unlink(missing_ok=True)
            except OSError:  # its folder went away meanwhile: the error that says so is raised
                pass
        f.close()


# What torch itself writes into a checkpoint's pickle: anything else it imports is code.
TORCH_PICKLE_IMPORTS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")
PICKLE_SCAN_BYTES = 64 << 20  # a checkpoint's pickle holds settings and names, not the weights


def pickled_imports(path: Path) -> list[str]:
    """The functions and classes a checkpoint's pickle would import, read without running it.
    Only its first PICKLE_SCAN_BYTES are read: this names what a refused file holds, and a
    sparse terabyte would not fit in memory."""
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is one member
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = b""
                if pickles:
                    with archive.open(pickles[0]) as member:
                        data = member.read(PICKLE_SCAN_BYTES)
        else:
            with path.open("rb") as f:
                data = f.read(PICKLE_SCAN_BYTES)
    except (OSError, zipfile.BadZipFile):
        return []
    imports, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                imports.append(arg.replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                imports.append(".".join(strings[-2:]))  # module and name, pushed just before
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # damaged past this point: what was read is what we know
        pass
    return [name for name in imports if not name.startswith(TORCH_PICKLE_IMPORTS)]

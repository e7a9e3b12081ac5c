"""Safe files: atomic writes under per-process temporary names, a write probe and an output lock.

- ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary file in ``path``'s folder, named after
  the target, this host and process and a random token (two writers never share one); it is given the
  usual file mode, fsynced and renamed over ``path`` with ``os.replace``, so a reader (or a process
  killed at any moment) sees the old file or the new one, never a half-written one.
- ``probe_writable(path)``: fail before any work when ``path`` cannot be written.
- ``OutputLock(path)``: ``path.lock``, created with ``O_CREAT | O_EXCL`` and holding the owner's pid,
  host and process start time, so a second process writing the same output is refused. A lock whose
  owner is dead (same host) is stale and taken over; the lock is released on return and on exceptions.
- ``atomic_write_all(files)``: several files that belong together (a result and its sidecar), all
  written to temporary names before any is renamed, so a failed write leaves every target as it was.
- ``tensor_bytes(t)``: a CPU tensor's bytes, for checksums (``mechir_nig.results``) and fingerprints.

Saved results (``save``/``load``, checksums, refusals) are ``mechir_nig.results.Result``.

Example:
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write(target, lambda tmp: tmp.write_text("done")).read_text()
    'done'
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mechir_nig.errors import CheckpointError, CheckpointLockedError


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:48] or "host"


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target``: ``<name>.<host>.<pid>.<random>.tmp``."""
    return target.with_name(f"{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask(0) would race with other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, target: Path) -> None:
    """Rename the complete, fsynced temporary file over ``target`` (atomic on POSIX and Windows)."""
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def atomic_write(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a per-process temporary file, then rename it over ``target``.

    The file gets the mode of any file this process writes (``0o666 & ~umask``; safetensors writes
    0600) and is on disk before the rename makes it ``target``. On an exception the temporary file is
    removed; a process killed before the rename leaves ``target`` as it was (and a ``.tmp`` file that
    ``remove_stale_temps`` clears once its writer is dead).
    """
    return atomic_write_all([(Path(target), write)])[0]


def atomic_write_all(files: Sequence[tuple[Path, Callable[[Path], Any]]]) -> list[Path]:
    """``atomic_write`` for files that belong together (a result and its sidecar): every ``write(tmp)``
    fills its temporary file first, and only when all are complete and on disk are they renamed over
    their targets, in order. A failed write (a full disk, an exception) removes every temporary file
    and leaves every target as it was; only a process killed between two renames (no write can fail
    there) leaves the first targets new and the others old.
    """
    temps: list[Path] = []
    try:
        for target, write in files:
            temps.append(temp_path(Path(target)))
            write(temps[-1])
            os.chmod(temps[-1], 0o666 & ~_umask())
            _fsync(temps[-1])
        for tmp, (target, _) in zip(temps, files, strict=True):
            _commit(tmp, Path(target))
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    return [Path(target) for target, _ in files]


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove temporary files of ``target`` left by dead writers on this host; return them."""
    pattern = re.compile(re.escape(target.name) + r"\.([A-Za-z0-9_-]+)\.(\d+)\.[0-9a-f]{8}\.tmp")
    removed: list[Path] = []
    host = _host()
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m and m.group(1) == host and not _pid_alive(int(m.group(2))):
            with contextlib.suppress(FileNotFoundError):
                (target.parent / name).unlink()
                removed.append(target.parent / name)
    return removed


def probe_writable(target: str | Path, what: str = "checkpoint") -> Path:
    """Check that ``target`` can be written (its folder created, a file created, renamed and removed
    there) before any work is done; raise ``CheckpointError`` naming the path and the fix."""
    target = Path(target)
    if target.is_dir():
        raise CheckpointError(
            f"{what} {target} is a folder; pass a file path such as {target / 'nig.safetensors'}"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"mechir_nig write probe\n")
        finally:
            os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        where = exc.filename or target.parent
        raise CheckpointError(
            f"cannot write the {what} {target}: {exc.strerror or exc} ({where}); nothing was attributed. "
            "Choose a path in a writable folder, or make the folder writable, and run again"
        ) from exc
    return target


class OutputLock:
    """An exclusive lock on writing ``target``: the file ``target.lock`` (see the module docstring).

    Example:
        >>> import tempfile
        >>> from mechir_nig.attribution.stats import CollectionAttribution
        >>> target = Path(tempfile.mkdtemp()) / "nig.safetensors"
        >>> stats = CollectionAttribution(layers=[0], n_layers=1, d_mlp=3)
        >>> with OutputLock(target):
        ...     (target.parent / "nig.safetensors.lock").exists()  # held while writing
        ...     _ = stats.save(target)
        True
        >>> (target.parent / "nig.safetensors.lock").exists()  # released on return
        False
    """

    def __init__(self, target: str | Path) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._info: dict[str, Any] | None = None

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        """The owner recorded in a lock file; ``None`` when it cannot be parsed (yet)."""
        for attempt in range(20):  # a lock just created may not hold its owner yet: wait ~1 s
            try:
                owner = json.loads(path.read_text())
                if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
                    return owner
            except FileNotFoundError:
                raise
            except (OSError, ValueError):
                pass
            if attempt < 19:
                time.sleep(0.05)
        return None

    def _stale(self, owner: dict[str, Any]) -> bool:
        if owner.get("host") != _host():
            return False  # another machine's process: cannot be checked from here
        pid = int(owner["pid"])
        if not _pid_alive(pid):
            return True
        start = owner.get("start")
        return start is not None and _start_time(pid) not in (None, start)  # the pid was reused

    def _break(self, owner: dict[str, Any]) -> None:
        """Remove a stale lock, unless another process replaced it meanwhile (then it is put back)."""
        aside = temp_path(self.path).with_suffix(".stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        try:
            moved = self._read(aside)
        except FileNotFoundError:
            return
        if moved is None or moved.get("token") != owner.get("token"):
            with contextlib.suppress(OSError):  # a live lock taken just now: restore it
                os.link(aside, self.path)
        with contextlib.suppress(OSError):
            os.unlink(aside)

    def acquire(self) -> OutputLock:
        """Take the lock or raise ``CheckpointLockedError`` naming the owner and what to do."""
        if self._info is not None:
            return self
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = self._read(self.path)
                except FileNotFoundError:
                    continue  # released meanwhile: try again
                if owner is None:
                    raise CheckpointLockedError(
                        f"{self.target} is locked by {self.path}, which names no owner; if no other "
                        f"process is writing {self.target}, delete {self.path} and run again"
                    ) from None
                if self._stale(owner):
                    self._break(owner)
                    continue
                raise CheckpointLockedError(
                    f"{self.target} is being written by process {owner['pid']} on {owner.get('host')} "
                    f"(since {owner.get('created')}; lock file {self.path}). Wait for it to finish or write "
                    f"to another path; if that process is gone (e.g. it ran on another machine), delete "
                    f"{self.path}"
                ) from None
            except OSError as exc:
                raise CheckpointError(
                    f"cannot create the lock file {self.path} for {self.target}: {exc.strerror or exc}; "
                    "choose a path in a writable folder"
                ) from exc
            info = {
                "pid": os.getpid(),
                "host": _host(),
                "start": _start_time(os.getpid()),
                "token": secrets.token_hex(8),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "argv": sys.argv[:4],
            }
            try:
                os.write(fd, json.dumps(info).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._info = info
            atexit.register(self.release)
            remove_stale_temps(self.target)
            remove_stale_temps(self.target.with_name(self.target.name + ".json"))
            return self
        raise CheckpointLockedError(
            f"could not take the lock {self.path} for {self.target} (other processes keep taking it); "
            "make sure a single process writes it"
        )

    def release(self) -> None:
        """Remove the lock file if this process (still) owns it."""
        info, self._info = self._info, None
        if info is None or info["pid"] != os.getpid():  # a forked child never releases its parent's lock
            return
        atexit.unregister(self.release)
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(owner, dict) and owner.get("token") == info["token"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def tensor_bytes(t: Tensor) -> bytes:
    """The bytes of CPU tensor ``t`` in row-major order (numpy's, or a fresh copy's for dtypes numpy lacks,
    e.g. bfloat16)."""
    import torch

    try:
        return t.numpy().tobytes()
    except TypeError:
        return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8).numpy().tobytes()

"""Safe files: atomic writes under per-process temporary names, a write probe and an output lock.

- ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary file in ``path``'s folder, named after
  the target, this host and process and a random token (two writers never share one); it is given the
  usual file mode, fsynced and renamed over ``path`` with ``os.replace``, so a reader (or a process
  killed at any moment) sees the old file or the new one, never a half-written one.
- ``probe_writable(path)``: fail before any work when ``path`` cannot be written.
- ``OutputLock(path)``: ``path.lock``, created with ``O_CREAT | O_EXCL`` and holding the owner's pid,
  host and process start time, so a second process writing the same output is refused. A lock whose
  owner is dead (same host) is stale and taken over; the lock is released on return and on exceptions.
- ``save_with_sidecar(path, tensors, side, kind=...)``: tensors in safetensors, the rest in a JSON sidecar,
  with the result's type and a sha256 ``checksum`` of both in the safetensors metadata;
  ``load_with_sidecar(path, kind=..., ...)`` reads them back and refuses (``CheckpointError`` naming the
  file and what to do) a truncated, corrupt, foreign or checksum-mismatched file or a missing sidecar.
- ``read_safetensors``, ``verify_checksum``, ``unusable``, ``read_json_result``: the pieces of those
  loads, shared with ``CollectionAttribution.load``, the JSON results and ``AblationReference.load``.

Example:
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = save_with_sidecar(folder / "r.safetensors", {"x": torch.ones(2)}, {"n": 1}, kind="Demo")
    >>> tensors, side = load_with_sidecar(path, kind="Demo", what="demo result", required={"x"})
    >>> tensors["x"].tolist(), side
    ([1.0, 1.0], {'n': 1})
    >>> (folder / "r.safetensors.json").unlink()
    >>> load_with_sidecar(path, kind="Demo", what="demo result", required={"x"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechir_nig.errors.CheckpointError: .../r.safetensors is not a usable demo result: its sidecar ... is missing...
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from mechir_nig.errors import CheckpointError, CheckpointLockedError, InputError


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
    target = Path(target)
    tmp = temp_path(target)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        _commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


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
        >>> with OutputLock("nig.safetensors"):  # doctest: +SKIP
        ...     stats.save("nig.safetensors")
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


TYPE_KEY = "mechir_nig.type"
"""Safetensors metadata key naming the result type of a file written by ``save_with_sidecar``."""
RESULT_FIX = "Save the result again (or restore an intact copy of the file), or load another file"
"""What to do with an unusable result file (the end of ``unusable``'s message)."""


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of ``path``: ``path.json`` (``x.safetensors`` -> ``x.safetensors.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def unusable(path: str | Path, what: str, why: str, fix: str = RESULT_FIX) -> CheckpointError:
    """The ``CheckpointError`` refusing ``path``: ``"<path> is not a usable <what>: <why>. <fix>"``."""
    return CheckpointError(f"{path} is not a usable {what}: {why}. {fix}")


def checksum(tensors: Mapping[str, Tensor], info: str, kind: str) -> str:
    """sha256 over ``mechir_nig.<kind>``, the metadata text ``info`` and, in name order, each tensor's
    name, dtype, shape and bytes (any dtype: the raw bytes of the contiguous CPU tensor)."""
    h = hashlib.sha256(f"mechir_nig.{kind}\0".encode())
    h.update(info.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def tensor_bytes(t: Tensor) -> bytes:
    """The bytes of CPU tensor ``t`` in row-major order (numpy's, or a fresh copy's for dtypes numpy lacks,
    e.g. bfloat16)."""
    import torch

    try:
        return t.numpy().tobytes()
    except TypeError:
        return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8).numpy().tobytes()


def canonical_json(obj: Any) -> str:
    """The JSON text of ``obj`` as it reads back (tuples as lists, sorted keys, no spaces): what a
    checksum covers, so that a sidecar re-indented by hand still verifies."""
    return json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))


def read_safetensors(
    path: str | Path, what: str, fix: str = RESULT_FIX
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor and the metadata of the safetensors file ``path``.

    Raises ``CheckpointError`` naming the file when it cannot be opened (``cannot read <path>``) or
    safetensors cannot parse it (truncated, random bytes, a damaged header: ``unusable``).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # safetensors' SafetensorError: truncated, random bytes, bad header
        raise unusable(
            path, what, f"safetensors cannot read it ({exc}); it is truncated or corrupt", fix
        ) from exc
    return tensors, metadata


def verify_checksum(
    path: str | Path,
    expected: str | None,
    tensors: Mapping[str, Tensor],
    info: str,
    kind: str,
    *,
    what: str,
    contents: str = "contents",
    hint: str = "",
    fix: str = RESULT_FIX,
    stacklevel: int = 3,
) -> None:
    """Compare the recorded checksum ``expected`` with ``checksum(tensors, info, kind)``.

    ``expected`` of ``None`` (a file written before checksums existed) warns (``UserWarning``: its
    ``contents`` cannot be verified); a mismatch raises ``unusable`` (the file was damaged after it was
    written; ``hint`` adds a likely cause).
    """
    if expected is None:
        warnings.warn(
            f"{path} has no checksum (written by an older mechir_nig): its {contents} cannot be "
            "verified; save it again to add one",
            UserWarning,
            stacklevel=stacklevel,
        )
        return
    actual = checksum(tensors, info, kind)
    if actual != expected:
        raise unusable(
            path,
            what,
            f"its checksum does not match its contents (recorded sha256 {expected[:12]}..., "
            f"computed {actual[:12]}...): the file was damaged after it was written{hint}",
            fix,
        )


def save_with_sidecar(
    path: str | Path, tensors: dict[str, Tensor], side: dict[str, Any], *, kind: str | None = None
) -> Path:
    """Write ``path`` (safetensors) and ``path.json`` (``side``), each atomically (``atomic_write``),
    so neither is ever half-written.

    With ``kind`` (the result's class name) the safetensors metadata records it (``TYPE_KEY``) and a
    sha256 ``checksum`` of the tensors and of ``side`` (``canonical_json``), which ``load_with_sidecar``
    verifies.
    """
    from safetensors.torch import save_file

    path = Path(path)
    text = json.dumps(side)
    metadata = None
    if kind is not None:
        metadata = {TYPE_KEY: kind, "sha256": checksum(tensors, canonical_json(json.loads(text)), kind)}
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def load_with_sidecar(
    path: str | Path,
    *,
    kind: str,
    what: str,
    required: Iterable[str],
    allowed: Callable[[str], bool] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and sidecar of a file written by ``save_with_sidecar(path, ..., kind=kind)``.

    Checks, in order: ``path`` exists (else ``InputError``); safetensors can read it; it is not another
    result type's file; it holds the ``required`` tensor names and only ``allowed`` ones (else it is
    another program's file); its sidecar exists and is a JSON object; the checksum matches (a file
    without one, written by an older mechir_nig, loads with a ``UserWarning``). Every refusal is a
    ``CheckpointError`` naming the file (``what``: e.g. ``"neuron attribution"``) and what to do.
    """
    path = Path(path)
    side_path = sidecar_path(path)
    if not path.is_file():
        raise InputError(
            f"no {what} at {path}: the file does not exist (save() writes it and {side_path.name}); "
            "pass the path a result was saved to"
        )
    tensors, metadata = read_safetensors(path, what)
    found = metadata.get(TYPE_KEY)
    if found is not None and found != kind:
        raise unusable(path, what, f"it holds a {found}, not a {kind}", f"Load it with {found}.load")
    required = set(required)
    names = sorted(tensors)
    missing = sorted(required - set(names))
    extra = [n for n in names if n not in required and (allowed is None or not allowed(n))]
    if missing or extra:
        shown = names[:8] + (["..."] if len(names) > 8 else [])
        raise unusable(
            path,
            what,
            f"it holds the tensors {shown}, not those of a {what} (missing {missing[:8]}, unexpected "
            f"{extra[:8]}; another program's file?)",
        )
    try:
        text = side_path.read_bytes()
    except FileNotFoundError:
        raise unusable(
            path,
            what,
            f"its sidecar {side_path} is missing (save() writes both files: keep them together)",
            f"Put {side_path.name} back next to {path.name}, or save the result again",
        ) from None
    except OSError as exc:
        raise CheckpointError(
            f"cannot read {side_path} (the sidecar of {path}): {exc.strerror or exc}"
        ) from exc
    try:
        side = json.loads(text)
        if not isinstance(side, dict):
            raise ValueError(f"a JSON {type(side).__name__}, not an object")
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise unusable(
            path, what, f"its sidecar {side_path} is not valid JSON ({exc}); it is truncated or corrupt"
        ) from exc
    if found is not None and "sha256" not in metadata:  # written with a type by this code: always summed
        raise unusable(path, what, "its header names its type but holds no checksum; the header is damaged")
    verify_checksum(
        path,
        metadata.get("sha256"),
        tensors,
        canonical_json(side),
        kind,
        what=what,
        hint=f" (or {side_path.name} was edited or belongs to another file, or a save was interrupted between "
        "the two files)",
        stacklevel=4,
    )
    return tensors, side


def read_json_result(
    path: str | Path, what: str, fields: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """The JSON object saved at ``path`` (a result's ``save``), with ``fields`` (name -> type) checked.

    Raises ``InputError`` when ``path`` does not exist, ``CheckpointError`` naming it when it cannot be
    read, is not JSON (truncated, random bytes), not an object, or lacks a field or holds one of another
    type (another program's file). Other keys are kept (files written by the command line carry more).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no {what} at {path}: the file does not exist; pass the path a result was saved to")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise unusable(path, what, f"it is not valid JSON ({exc}); it is truncated or corrupt") from exc
    if not isinstance(data, dict):
        raise unusable(
            path, what, f"it holds a JSON {type(data).__name__}, not an object (another program's file?)"
        )
    missing = [k for k in fields if k not in data]
    if missing:
        raise unusable(
            path, what, f"it lacks the fields {missing} (it has {sorted(data)[:10]}; another program's file?)"
        )
    for name, types in fields.items():
        value = data[name]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
            want = " or ".join(t.__name__ for t in _tuple(types))
            raise unusable(path, what, f"its field {name!r} is a {type(value).__name__}, expected {want}")
    return data


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)

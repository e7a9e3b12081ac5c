"""One persistence mechanism for every saved result: the ``Result`` base of the result dataclasses.

A result dataclass subclasses ``Result`` and names its ``KIND`` (the type recorded in the file), ``WHAT``
(the words of its error messages) and ``LAYOUT``. Its fields are sorted by their annotations: a
``Tensor`` field (jaxtyping annotations included; ``| None`` when it may be absent) and a
``dict[str, Tensor]`` field (stored as ``<field>.<key>``, its key order in the JSON part) are
tensors, every other field (names starting with ``_`` aside: caches) is JSON. ``to_parts`` /
``from_parts`` turn a result into ``(tensors, info)`` and back; a subclass overrides them only where it
differs (other tensor names, checks that the pieces fit together).

Layouts (``LAYOUT``):

- ``"pair"``: the tensors in ``path`` (safetensors), the JSON in the sidecar ``path.json``; the
  safetensors header records the kind (``TYPE_KEY``), the schema version (``VERSION_KEY``) and a
  sha256 ``checksum`` of the tensors and of the sidecar (its ``canonical_json``, so a re-indented
  sidecar still verifies). ``NeuronAttribution``, ``PatchingResult``, ``AblationReference``.
- ``"checkpoint"``: the same, with the JSON inside the safetensors header (``INFO_KEY``): the file alone
  is the result (a checkpoint is one atomic file); ``path.json`` is a readable copy, never read back.
  ``CollectionAttribution``.
- ``"json"``: one JSON file: the JSON fields, the tensors as nested lists with their dtypes and shapes
  under ``"tensors"``, and ``INFO_KEY``: ``{"type", "version", "sha256", "extra"}`` (the checksum covers
  every key but that header and the ``extra`` keys ``save(path, extra=...)`` adds).
  ``PruningResult``, ``FaithfulnessResult``.

Saving a pair writes both files under temporary names first and renames them only when both are
complete (the tensors, then the sidecar: the checksum binds them), so a failed save (a full disk, an
exception) leaves the earlier result as it was and no temporary file. A process killed between the two
renames leaves the new tensors and the new sidecar under its temporary name: ``load`` finishes that save
(the temporary sidecar that matches the checksum is put in place, with a warning). ``load`` refuses, with a
``CheckpointError`` naming the file and what to do: a truncated or random file, another program's file
(other tensor names or JSON fields), another result's file, a ``torch.save`` (pickle) file, a file of
a newer schema version, a missing or damaged sidecar, a field of the wrong type, pieces that do not
fit together, and a checksum mismatch. A file written before checksums existed loads with a
``UserWarning``.

Example:
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo(Result):
    ...     KIND = "Demo"
    ...     WHAT = "demo result"
    ...     x: Tensor
    ...     n: int
    >>> path = Demo(torch.ones(2), 1).save(Path(tempfile.mkdtemp()) / "r.safetensors")
    >>> Demo.load(path)
    Demo(x=tensor([1., 1.]), n=1)
    >>> sidecar_path(path).unlink()
    >>> Demo.load(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mechir_nig.errors.CheckpointError: .../r.safetensors is not a usable demo result: its sidecar ... is missing...
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from mechir_nig import _io
from mechir_nig.errors import CheckpointError, InputError

__all__ = [
    "INFO_KEY",
    "RESULT_FIX",
    "TYPE_KEY",
    "VERSION_KEY",
    "Result",
    "canonical_json",
    "checksum",
    "sidecar_path",
    "unusable",
]

TYPE_KEY = "mechir_nig.type"
"""Safetensors metadata key naming the result type (``Result.KIND``)."""
VERSION_KEY = "mechir_nig.version"
"""Safetensors metadata key of the schema version (``Result.VERSION``)."""
INFO_KEY = "mechir_nig"
"""The JSON part inside a checkpoint's safetensors header; the header object of a JSON result."""
RESULT_FIX = "Save the result again (or restore an intact copy of the file), or load another file"
"""What to do with an unusable result file (the end of ``unusable``'s message)."""
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a bare pickle (protocol >= 2)

R = TypeVar("R", bound="Result")


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of ``path``: ``path.json`` (``x.safetensors`` -> ``x.safetensors.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def unusable(path: str | Path, what: str, why: str, fix: str = RESULT_FIX) -> CheckpointError:
    """The ``CheckpointError`` refusing ``path``: ``"<path> is not a usable <what>: <why>. <fix>"``."""
    return CheckpointError(f"{path} is not a usable {what}: {why}. {fix}")


def checksum(tensors: Mapping[str, Tensor], info: str, kind: str) -> str:
    """sha256 over ``mechir_nig.<kind>``, the JSON text ``info`` and, in name order, each tensor's
    name, dtype, shape and bytes (any dtype: the raw bytes of the contiguous CPU tensor)."""
    h = hashlib.sha256(f"mechir_nig.{kind}\0".encode())
    h.update(info.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_io.tensor_bytes(t))
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """The JSON text of ``obj`` as it reads back (tuples as lists, sorted keys, no spaces): what a
    checksum covers, so that a sidecar re-indented by hand still verifies."""
    return json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))


# -- the fields of a result -----------------------------------------------------------------------------
def _is_tensor(hint: Any) -> bool:
    return hint is Tensor or getattr(hint, "array_type", None) is Tensor  # jaxtyping: Float[Tensor, "..."]


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, else ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


_FIELDS: dict[type, tuple[tuple[str, str, Any, bool], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, str, Any, bool], ...]:
    """``(name, kind, hint, required)`` of each saved field; kind ``"tensor"``, ``"tensors"`` (a dict of
    them) or ``"json"``; ``required``: no default and not ``| None``."""
    if cls in _FIELDS:
        return _FIELDS[cls]
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        hint, optional = _optional(hints[f.name])
        if _is_tensor(hint):
            kind = "tensor"
        elif typing.get_origin(hint) is dict and _is_tensor(typing.get_args(hint)[1]):
            kind = "tensors"
        else:
            kind = "json"
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append((f.name, kind, hints[f.name], no_default and not optional))
    _FIELDS[cls] = tuple(out)
    return _FIELDS[cls]


def _json_type(hint: Any) -> tuple[type, ...] | None:
    """The JSON types a value of ``hint`` may read back as (``None``: anything)."""
    hint, optional = _optional(hint)
    origin = typing.get_origin(hint) or hint
    found: tuple[type, ...] | None = {
        list: (list,),
        tuple: (list,),
        dict: (dict,),
        int: (int,),
        float: (int, float),
        str: (str,),
        bool: (bool,),
    }.get(origin)
    if found is None:
        return None
    return found + ((type(None),) if optional else ())


def _type_error(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` is not a JSON value of ``hint`` (``None`` when it is), one level deep into lists."""
    want = _json_type(hint)
    if want is None:
        return None
    if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
        return f"its field {name!r} is a {type(value).__name__}, expected {' or '.join(t.__name__ for t in want)}"
    args = typing.get_args(_optional(hint)[0])
    if isinstance(value, list) and len(args) == 1:
        item = _json_type(args[0])
        if item is not None and not all(
            isinstance(v, item) and not (isinstance(v, bool) and bool not in item) for v in value
        ):
            return f"its field {name!r} is not a list of {' or '.join(t.__name__ for t in item)}"
    return None


def _layout(t: Tensor) -> dict[str, Any]:
    """The dtype and shape of ``t`` (what JSON's nested lists lose), e.g. ``{"dtype": "int64", "shape": [2, 3, 2]}``."""
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


def _from_lists(values: Any, layout: Any, dtype: torch.dtype | None) -> Tensor:
    """The tensor of nested lists ``values`` with ``layout`` (``_layout``) or, without one, ``dtype``.
    ``TypeError``/``ValueError`` when ``values`` is not rectangular numbers of the recorded shape."""
    if layout is not None:
        name = layout["dtype"]
        found = getattr(torch, name, None) if isinstance(name, str) else None
        if not isinstance(found, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
        dtype = found
    if not isinstance(values, list):
        raise TypeError(f"expected nested lists, got a {type(values).__name__}")
    t = torch.tensor(values, dtype=dtype)
    if layout is not None:
        shape = tuple(int(n) for n in layout["shape"])
        if t.numel() != 0 and tuple(t.shape) != shape:
            raise ValueError(f"the values have shape {tuple(t.shape)}, the recorded shape is {shape}")
        return t.reshape(shape)
    return t


# -- the base ---------------------------------------------------------------------------------------------
class Result:
    """Base of the saved result dataclasses: ``save``, ``load`` and their pieces (module docstring).

    Subclasses set ``KIND``, ``WHAT`` and, where they differ from the defaults, ``LAYOUT``, ``VERSION``
    (raise it when the saved layout changes: older versions still load, newer ones are refused),
    ``FIX`` (the end of every refusal) and ``JSON_DTYPES`` (the dtype of a JSON tensor saved without
    one).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from mechir_nig.attribution import NeuronAttribution
        >>> from mechir_nig.attribution.stats import CollectionAttribution
        >>> from mechir_nig.experiments.pruning import PruningResult
        >>> out = Path(tempfile.mkdtemp())
        >>> attr = neuron_integrated_gradients(ce, queries, docs, n_steps=4, layers=[5], reduce="neuron")
        >>> attr.save(out / "attr.safetensors").name  # attr.safetensors + attr.safetensors.json
        'attr.safetensors'
        >>> NeuronAttribution.load(out / "attr.safetensors").values.shape  # as saved
        torch.Size([2, 1, 1536])
        >>> stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=3)
        >>> stats.update("relevant", torch.ones(5, 2, 4, 3))  # [pairs, layer, group, d_mlp]
        >>> CollectionAttribution.load(stats.save(out / "nig.safetensors")).counts
        {'relevant': 5, 'nonrelevant': 0}
        >>> runs = [{"condition": "unpruned", "mode": "zero", "fraction": 0.0, "seed": 0, "n_neurons": 0,
        ...          "nDCG@10": 0.7}]
        >>> result = PruningResult(["nDCG@10"], runs, [{}], {}, ["q1"], ["q2"], {})
        >>> PruningResult.load(result.save(out / "pruning.json")) == result  # one JSON file
        True
    """

    KIND: ClassVar[str]
    WHAT: ClassVar[str]
    LAYOUT: ClassVar[str] = "pair"
    VERSION: ClassVar[int] = 1
    FIX: ClassVar[str] = RESULT_FIX
    JSON_DTYPES: ClassVar[dict[str, torch.dtype]] = {}

    # -- the pieces ----------------------------------------------------------------------------------------
    def to_parts(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The tensors (contiguous, on the CPU) and the JSON part of this result."""
        tensors: dict[str, Tensor] = {}
        info: dict[str, Any] = {}
        for name, kind, _, _ in _fields(type(self)):
            value = getattr(self, name)
            if kind == "tensor":
                if value is not None:
                    tensors[name] = value
            elif kind == "tensors":
                tensors |= {f"{name}.{k}": t for k, t in value.items()}
                info[name] = list(value)  # the key order (safetensors sorts names)
            else:
                info[name] = value
        return {k: t.detach().contiguous().cpu() for k, t in tensors.items()}, info

    @classmethod
    def from_parts(cls: type[R], tensors: dict[str, Tensor], info: dict[str, Any]) -> R:
        """The result of ``to_parts``' pieces; ``KeyError``/``TypeError``/``ValueError`` when they do not
        make one (``load`` turns them into a ``CheckpointError``)."""
        kw: dict[str, Any] = {}
        for name, kind, _, _ in _fields(cls):
            if kind == "tensor":
                if name in tensors:
                    kw[name] = tensors[name]
            elif kind == "tensors":
                keys = info.get(name, [])
                held = sorted(n.removeprefix(f"{name}.") for n in tensors if n.startswith(f"{name}."))
                if sorted(keys) != held:
                    raise ValueError(f"the JSON part lists the {name} {keys} but the file holds {held}")
                kw[name] = {k: tensors[f"{name}.{k}"] for k in keys}
            elif name in info:
                kw[name] = info[name]
        return cls(**kw)

    @classmethod
    def tensor_names(cls) -> tuple[set[str], Callable[[str], bool]]:
        """The tensor names a file must hold and a test of the other names it may hold."""
        required = {n for n, kind, _, req in _fields(cls) if kind == "tensor" and req}
        optional = {n for n, kind, _, req in _fields(cls) if kind == "tensor" and not req}
        prefixes = tuple(f"{n}." for n, kind, _, _ in _fields(cls) if kind == "tensors")
        return required, lambda n: n in optional or (bool(prefixes) and n.startswith(prefixes))

    # -- saving ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write this result to ``path`` (and its sidecar ``path.json`` in the ``"pair"`` and
        ``"checkpoint"`` layouts); a failed save leaves the earlier files as they were.

        ``extra``: JSON keys written beside a ``"json"`` result (not part of it: ``load`` ignores them).

        Raises:
            CheckpointError: the files cannot be written (e.g. the disk is full), naming the path.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> result = neuron_integrated_gradients(ce, queries, docs, n_steps=4, layers=[5], reduce="neuron")
            >>> path = result.save(Path(tempfile.mkdtemp()) / "result.safetensors")
            >>> sorted(p.name for p in path.parent.iterdir())  # and result.safetensors.json
            ['result.safetensors', 'result.safetensors.json']
        """
        path = Path(path)
        tensors, info = self.to_parts()
        meta = {TYPE_KEY: self.KIND, VERSION_KEY: str(self.VERSION)}
        files: list[tuple[Path, Callable[[Path], Any]]]
        if self.LAYOUT == "json":
            doc = self._json_doc(tensors, info)
            header = {
                "type": self.KIND,
                "version": self.VERSION,
                "sha256": checksum({}, canonical_json(doc), self.KIND),
            }
            added = {k: v for k, v in (extra or {}).items() if k not in doc and k != INFO_KEY}
            if added:
                header["extra"] = sorted(added)
                doc = added | doc
            text = json.dumps(doc | {INFO_KEY: header}, indent=1)
            files = [(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))]
        else:
            from safetensors.torch import save_file

            if extra:
                raise InputError(f"extra= is for JSON results; a {self.KIND} keeps its extras in meta")
            if self.LAYOUT == "checkpoint":
                meta[INFO_KEY] = json.dumps(info)
                meta["sha256"] = checksum(tensors, meta[INFO_KEY], self.KIND)
                side = json.dumps(info, indent=1)  # a readable copy
            else:
                side = json.dumps(info)
                meta["sha256"] = checksum(tensors, canonical_json(info), self.KIND)
            files = [
                (path, lambda tmp: save_file(tensors, str(tmp), metadata=meta)),
                (sidecar_path(path), lambda tmp: tmp.write_text(side, encoding="utf-8")),
            ]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _io.atomic_write_all(files)
        except CheckpointError:
            raise
        except OSError as exc:
            raise CheckpointError(
                f"cannot write the {self.WHAT} {path}: {exc.strerror or exc} ({exc.filename or path.parent}); "
                "the files there before, if any, are unchanged. Free some space or choose another folder, "
                "and save again"
            ) from exc
        return path

    def _json_doc(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> dict[str, Any]:
        """The JSON document of a ``"json"`` result: ``info``, each tensor field as nested lists and
        their dtypes and shapes under ``"tensors"``."""
        doc = dict(info)
        layouts: dict[str, Any] = {}
        for name, kind, _, _ in _fields(type(self)):
            if kind == "tensor" and name in tensors:
                doc[name], layouts[name] = tensors[name].tolist(), _layout(tensors[name])
            elif kind == "tensors":
                keys = doc.pop(name)
                doc[name] = {k: tensors[f"{name}.{k}"].tolist() for k in keys}
                layouts[name] = {k: _layout(tensors[f"{name}.{k}"]) for k in keys}
        return doc | {"tensors": layouts}

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by ``save`` (see the module docstring for what is refused).

        Raises:
            InputError: ``path`` does not exist.
            CheckpointError: naming the file and what to do, when it is not a usable result of this type.

        Example:
            >>> import tempfile
            >>> from pathlib import Path
            >>> result = neuron_integrated_gradients(ce, queries, docs, n_steps=4, layers=[5], reduce="neuron")
            >>> path = result.save(Path(tempfile.mkdtemp()) / "result.safetensors")
            >>> back = type(result).load(path)
            >>> bool(torch.equal(back.values, result.values))
            True
        """
        path = Path(path)
        if not path.is_file():
            side = "" if cls.LAYOUT == "json" else f" (save() writes it and {sidecar_path(path).name})"
            raise InputError(
                f"no {cls.WHAT} at {path}: the file does not exist{side}; pass the path a result was saved to"
            )
        if cls.LAYOUT == "json":
            tensors, info, verify = cls._read_json(path)
        else:
            tensors, info, verify = cls._read_safetensors(path)
        why = cls._json_problem(info)
        if why is not None:
            raise cls._refuse(path, why)
        try:
            result = cls.from_parts(tensors, info)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # InputError is a ValueError
            raise cls._refuse(path, f"its contents do not make one ({type(exc).__name__}: {exc})") from exc
        verify()
        return result

    @classmethod
    def _json_problem(cls, info: Mapping[str, Any]) -> str | None:
        """Why the JSON part ``info`` is not this result's (a required field missing, a field of the wrong
        type), or ``None``."""
        for name, kind, hint, required in _fields(cls):
            if kind != "json":
                continue
            if name not in info:
                if required:
                    missing = [n for n, k, _, req in _fields(cls) if k == "json" and req and n not in info]
                    return (
                        f"it lacks the fields {missing} (it has {sorted(info)[:10]}; another program's file?)"
                    )
                continue
            why = _type_error(name, info[name], hint)
            if why is not None:
                return why
        return None

    @classmethod
    def _tensor_problem(cls, names: Iterable[str]) -> str | None:
        """Why the tensor names ``names`` are not this result's (missing or unexpected ones), or ``None``."""
        required, allowed = cls.tensor_names()
        names = sorted(names)
        missing = sorted(required - set(names))
        extra = [n for n in names if n not in required and not allowed(n)]
        if not (missing or extra):
            return None
        shown = names[:8] + (["..."] if len(names) > 8 else [])
        return (
            f"it holds the tensors {shown}, not those of a {cls.WHAT} (missing {missing[:8]}, unexpected "
            f"{extra[:8]}; another program's file?)"
        )

    @classmethod
    def from_nested_parts(cls: type[R], tensors: dict[str, Tensor], info: Any) -> R:
        """``from_parts`` of a result stored inside another result's file, after the checks ``load``
        makes on a file of its own (tensor names, JSON fields and their types): a result made of
        several (e.g. ``PathPatchingResult``, one ``PatchingResult`` per receiver) reads its parts with
        this. ``TypeError``/``ValueError`` say what does not fit (``load`` refuses the file with it).

        Example:
            >>> from mechir_nig.interventions.patching import PatchingResult
            >>> PatchingResult.from_nested_parts({}, {})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: it holds the tensors [], not those of a patching result (missing [...]...
        """
        if not isinstance(info, dict):
            raise TypeError(f"its JSON part is a {type(info).__name__}, not an object")
        why = cls._tensor_problem(tensors) or cls._json_problem(info)
        if why is not None:
            raise ValueError(why)
        return cls.from_parts(tensors, info)

    @classmethod
    def _refuse(cls, path: Path, why: str) -> CheckpointError:
        return unusable(path, cls.WHAT, why, cls.FIX)

    @classmethod
    def _verifier(
        cls,
        path: Path,
        expected: str | None,
        tensors: Mapping[str, Tensor],
        text: str,
        hint: str,
        actual: str | None = None,
    ) -> Callable[[], None]:
        """Check the recorded checksum ``expected`` against ``checksum(tensors, text, KIND)`` (``actual``
        when already computed): a mismatch refuses the file, no checksum (a file written before they
        existed) warns."""

        def verify() -> None:
            if expected is None:
                warnings.warn(
                    f"{path} has no checksum (written by an older mechir_nig): its contents cannot be "
                    "verified; save it again to add one",
                    UserWarning,
                    stacklevel=3,  # the caller of load
                )
                return
            found = actual if actual is not None else checksum(tensors, text, cls.KIND)
            if found != expected:
                raise cls._refuse(
                    path,
                    f"its checksum does not match its contents (recorded sha256 {expected[:12]}..., "
                    f"computed {found[:12]}...): the file was damaged after it was written{hint}",
                )

        return verify

    @classmethod
    def _check_type(cls, path: Path, found: Any, version: Any) -> None:
        if found is not None and found != cls.KIND:
            raise unusable(
                path, cls.WHAT, f"it holds a {found}, not a {cls.KIND}", f"Load it with {found}.load"
            )
        try:
            newer = version is not None and int(version) > cls.VERSION
        except (TypeError, ValueError):
            raise cls._refuse(
                path, f"its schema version {version!r} is not a number; the file is damaged"
            ) from None
        if newer:
            raise unusable(
                path,
                cls.WHAT,
                f"it was written by a newer mechir_nig (schema version {version}; this one reads up to "
                f"{cls.VERSION})",
                "Upgrade mechir_nig to load it",
            )

    @classmethod
    def _read_safetensors(cls, path: Path) -> tuple[dict[str, Tensor], dict[str, Any], Callable[[], None]]:
        """The tensors and JSON part of a ``"pair"`` or ``"checkpoint"`` file, and its checksum test."""
        from safetensors import safe_open

        try:
            with path.open("rb") as f:
                head = f.read(4)
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except Exception as exc:  # safetensors' SafetensorError: truncated, random bytes, bad header
            if head.startswith(_PICKLE_MAGIC):
                raise unusable(
                    path,
                    cls.WHAT,
                    "it is a torch.save (pickle) file, not safetensors: written by an older mechir_nig or "
                    "another program. mechir_nig does not read pickles (they can hold code)",
                    f"Compute the {cls.WHAT} again and save it",
                ) from exc
            raise cls._refuse(
                path, f"safetensors cannot read it ({exc}); it is truncated or corrupt"
            ) from exc
        cls._check_type(path, metadata.get(TYPE_KEY), metadata.get(VERSION_KEY))
        side = sidecar_path(path)
        actual: str | None = None
        if cls.LAYOUT == "checkpoint":
            text = metadata.get(INFO_KEY)
            if text is None:
                raise cls._refuse(
                    path, "a safetensors file without mechir_nig metadata (another program's file?)"
                )
            try:
                info = json.loads(text)
            except ValueError as exc:
                raise cls._refuse(path, f"its mechir_nig metadata is malformed ({exc})") from exc
            hint = ""
        else:
            text, info = cls._read_sidecar(path, side)
            if metadata.get(TYPE_KEY) is not None and "sha256" not in metadata:  # typed files are summed
                raise cls._refuse(
                    path, "its header names its type but holds no checksum; the header is damaged"
                )
            if metadata.get("sha256") is not None:
                actual = checksum(tensors, text, cls.KIND)
                if actual != metadata["sha256"]:
                    finished = cls._finish_save(path, side, tensors, metadata["sha256"])
                    if finished is not None:
                        (text, info), actual = finished, metadata["sha256"]
            hint = (
                f" (or {side.name} was edited or belongs to another file, or a save was interrupted between "
                "the two files)"
            )
        if not isinstance(info, dict):
            raise cls._refuse(path, f"its JSON part is a {type(info).__name__}, not an object")
        why = cls._tensor_problem(tensors)
        if why is not None:
            raise cls._refuse(path, why)
        return tensors, info, cls._verifier(path, metadata.get("sha256"), tensors, text, hint, actual)

    @classmethod
    def _finish_save(
        cls, path: Path, side: Path, tensors: Mapping[str, Tensor], expected: str
    ) -> tuple[str, Any] | None:
        """A save killed between its two renames left the new tensors in ``path`` and the new sidecar
        under a temporary name: when one matches the checksum, copy it over ``side`` (atomically; the
        temporary file is left to its writer, or removed when that is dead) and return its text and
        value, with a warning. ``None`` when none matches."""
        for tmp in sorted(side.parent.glob(glob.escape(side.name) + ".*.tmp")):
            try:
                raw = tmp.read_bytes()
                info = json.loads(raw)
            except (OSError, ValueError):
                continue
            text = canonical_json(info)
            if checksum(tensors, text, cls.KIND) == expected:
                _io.atomic_write(side, functools.partial(Path.write_bytes, data=raw))
                _io.remove_stale_temps(side)
                warnings.warn(
                    f"{path}: finished a save that was interrupted between its two files ({side.name} "
                    f"was still under the temporary name {tmp.name})",
                    UserWarning,
                    stacklevel=4,
                )
                return text, info
        return None

    @classmethod
    def _read_sidecar(cls, path: Path, side: Path) -> tuple[str, Any]:
        """The canonical text and the value of ``path``'s sidecar ``side``."""
        try:
            raw = side.read_bytes()
        except FileNotFoundError:
            raise unusable(
                path,
                cls.WHAT,
                f"its sidecar {side} is missing (save() writes both files: keep them together)",
                f"Put {side.name} back next to {path.name}, or save the result again",
            ) from None
        except OSError as exc:
            raise CheckpointError(
                f"cannot read {side} (the sidecar of {path}): {exc.strerror or exc}"
            ) from exc
        try:
            info = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise cls._refuse(
                path, f"its sidecar {side} is not valid JSON ({exc}); it is truncated or corrupt"
            ) from exc
        return canonical_json(info), info

    @classmethod
    def _read_json(cls, path: Path) -> tuple[dict[str, Tensor], dict[str, Any], Callable[[], None]]:
        """The tensors and JSON part of a ``"json"`` file, and its checksum test."""
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise cls._refuse(path, f"it is not valid JSON ({exc}); it is truncated or corrupt") from exc
        if not isinstance(doc, dict):
            raise cls._refuse(
                path, f"it holds a JSON {type(doc).__name__}, not an object (another program's file?)"
            )
        header = doc.pop(INFO_KEY, None)
        if header is not None and not isinstance(header, dict):
            raise cls._refuse(path, f"its {INFO_KEY!r} header is a {type(header).__name__}, not an object")
        header = header or {}
        cls._check_type(path, header.get("type"), header.get("version"))
        extra = header.get("extra") or []
        if not isinstance(extra, list):
            raise cls._refuse(
                path, f"its {INFO_KEY!r} header lists extra keys {extra!r}; the header is damaged"
            )
        covered = {k: v for k, v in doc.items() if k not in extra}
        layouts = doc.get("tensors") or {}
        tensors: dict[str, Tensor] = {}
        try:
            for name, kind, _, _ in _fields(cls):
                if kind == "json" or name not in doc:
                    continue
                dtype = cls.JSON_DTYPES.get(name)
                if kind == "tensor":
                    tensors[name] = _from_lists(doc[name], layouts.get(name), dtype)
                else:
                    lay = layouts.get(name) or {}
                    tensors |= {
                        f"{name}.{k}": _from_lists(v, lay.get(k), dtype) for k, v in doc[name].items()
                    }
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise cls._refuse(path, f"its tensors are malformed ({type(exc).__name__}: {exc})") from exc
        info = {k: v for k, v in doc.items() if k != "tensors" and k not in tensors}
        for name, kind, _, _ in _fields(cls):
            if kind == "tensors" and name in doc:
                info[name] = list(doc[name])
            elif kind == "tensor":
                info.pop(name, None)
        hint = " (or it was edited)"
        return tensors, info, cls._verifier(path, header.get("sha256"), {}, canonical_json(covered), hint)

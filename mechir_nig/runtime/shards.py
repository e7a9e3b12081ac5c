"""Sharded checkpoints of a distributed collection attribution: per-rank parts and their manifest.

Beside the checkpoint ``C`` (the path of the final result) a sharded run keeps:

- ``C.manifest.json``, written atomically by rank 0 when a generation (a launch, or a resume) begins:
  ``format``, ``generation``, ``world_size``, ``n_pairs``, ``pairs_fingerprint``, the NIG ``settings``
  (the model's hash included) and ``parts``: for each rank its ``file`` and ``carried``, the number of
  pairs it held when the generation began (rank 0 carries what the earlier generations did).
- ``C.rank{r}of{w}.g{g}.safetensors`` (and its ``.json``): rank ``r``'s part, a ``CollectionAttribution``
  whose metadata ``shard.done`` lists the pairs it holds (positions in the run's longest-first pair
  order, as a bitmap: zlib + base64). The list is in the same checksummed file as the statistics, so
  the two never disagree. Only rank ``r`` writes it (atomically, every ``checkpoint_every`` of its pairs).
- ``C``: the result, written by rank 0 when every pair is done; the parts and the manifest are then
  removed.

Resume (:func:`prepare`, on rank 0 while it holds ``C.lock``): a complete ``C`` is the answer. Otherwise
the parts named by the manifest are loaded and verified (checksum, settings, disjoint pair lists) and
merged, and a new generation begins: rank 0's new part is written holding the merge, the new manifest
naming the new parts is written (the commit), then the old parts are removed. The pairs not yet done are
sharded over the new world, whatever its size. A partial single-process checkpoint ``C`` (the first
``n_done`` pairs of the order) is folded in the same way. A crash at any moment leaves the old manifest
with its parts or the new one with its parts; files no manifest names are removed at the next resume.
No pair is lost or counted twice.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mechir_nig._io import atomic_write, remove_stale_temps
from mechir_nig.attribution.stats import LABELS, CollectionAttribution
from mechir_nig.errors import CheckpointError, InputError

FORMAT = "mechir_nig.sharded_collection_attribution"
VERSION = 1


def manifest_path(ckpt: Path) -> Path:
    """``C.manifest.json``."""
    return ckpt.with_name(ckpt.name + ".manifest.json")


def part_path(ckpt: Path, rank: int, world_size: int, generation: int) -> Path:
    """``C.rank{rank}of{world_size}.g{generation}.safetensors``."""
    return ckpt.with_name(f"{ckpt.name}.rank{rank}of{world_size}.g{generation}.safetensors")


def _part_pattern(ckpt: Path) -> re.Pattern[str]:
    """A part file or its sidecar (group 1), or a temporary file of either (``_io.temp_path``)."""
    return re.compile(
        "("
        + re.escape(ckpt.name)
        + r"\.rank\d+of\d+\.g\d+\.safetensors(?:\.json)?)(\.[A-Za-z0-9_-]+\.\d+\.[0-9a-f]{8}\.tmp)?"
    )


def encode_positions(positions: Iterable[int], n: int) -> str:
    """A set of positions in ``range(n)`` as a compressed bitmap (zlib + base64 text).

    Example:
        >>> decode_positions(encode_positions([0, 3, 4], 6), 6)
        [0, 3, 4]
    """
    bits: Any = np.zeros(n, dtype=np.uint8)
    bits[list(positions)] = 1
    return base64.b64encode(zlib.compress(np.packbits(bits, bitorder="little").tobytes(), 9)).decode()


def decode_positions(text: str, n: int) -> list[int]:
    """The sorted positions of :func:`encode_positions`; ``ValueError`` when ``text`` is not one of ``n``."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text.encode(), validate=True)), dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise ValueError(f"a bitmap of {raw.size} bytes, expected {(n + 7) // 8} for {n} pairs")
    bits: Any = np.unpackbits(raw, bitorder="little")
    if bits[n:].any():
        raise ValueError(f"positions beyond the {n} pairs")
    return [int(i) for i in np.flatnonzero(bits[:n])]


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_record(meta: dict[str, Any], record: dict[str, Any], path: Path) -> None:
    """Refuse (``InputError``) a checkpoint made with other pairs, settings or weights."""
    want = _json_ready(record)
    old = {k: meta.get(k) for k in want}
    if old != want:
        diff = {k: (old[k], want[k]) for k in want if old[k] != want[k]}
        what = "another model (its weights differ)" if "model" in diff else "other pairs or settings"
        raise InputError(f"checkpoint {path} was made with {what} {diff}; use another file")


def save_part(
    stats: CollectionAttribution,
    path: Path,
    *,
    rank: int,
    world_size: int,
    generation: int,
    held: Iterable[int],
    n_pairs: int,
) -> Path:
    """Write rank ``rank``'s part: ``stats`` with the positions it holds (``meta["shard"]``)."""
    held = sorted(held)
    stats.meta["shard"] = {
        "rank": rank,
        "world_size": world_size,
        "generation": generation,
        "n_held": len(held),
        "done": encode_positions(held, n_pairs),
    }
    stats.n_done = len(held)
    return stats.save(path)


def load_part(
    path: Path, entry: dict[str, Any], record: dict[str, Any], n_pairs: int
) -> tuple[CollectionAttribution, list[int]]:
    """A part and the positions it holds, verified against its manifest ``entry`` and ``record``."""
    stats = CollectionAttribution.load(path)  # CheckpointError when truncated, corrupt or foreign
    check_record(stats.meta, record, path)

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is not a usable part of this sharded run: {why}. Nothing can be resumed from it: "
            f"delete {path.name.split('.rank')[0]}.manifest.json and the part files to start over"
        )

    shard = stats.meta.get("shard")
    if not isinstance(shard, dict):
        raise refuse("it lists no pairs (no shard metadata)")
    try:
        done = decode_positions(str(shard["done"]), n_pairs)
    except (KeyError, ValueError, TypeError, zlib.error) as exc:
        raise refuse(f"its list of pairs is malformed ({exc})") from exc
    if (
        shard.get("rank") != entry["rank"]
        or len(done) != stats.n_done
        or sum(stats.counts.values()) != len(done)
    ):
        raise refuse(
            f"it is rank {shard.get('rank')}'s with {len(done)} pairs listed, n_done={stats.n_done} and "
            f"{sum(stats.counts.values())} pairs counted; the manifest expects rank {entry['rank']}"
        )
    return stats, done


def read_manifest(path: Path, n_pairs: int) -> dict[str, Any]:
    """The manifest at ``path``; ``CheckpointError`` naming the file when it is not one."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is not a usable sharded-run manifest: {why}. Nothing can be resumed from it: delete "
            "it and its part files to start over"
        )

    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise refuse(f"it is not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise refuse(f"its format is not {FORMAT!r}")
    if data.get("version") != VERSION:
        raise refuse(f"it is version {data.get('version')!r}; this mechir_nig reads version {VERSION}")
    try:
        generation, world = int(data["generation"]), int(data["world_size"])
        parts = data["parts"]
        if not isinstance(parts, list) or len(parts) != world:
            raise ValueError(f"{world} ranks but {len(parts) if isinstance(parts, list) else parts!r} parts")
        for r, entry in enumerate(parts):
            if entry.get("rank") != r or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
                raise ValueError(f"part {r} is {entry!r}")
            if not isinstance(entry.get("carried"), int) or not 0 <= entry["carried"] <= n_pairs:
                raise ValueError(f"part {r} carries {entry.get('carried')!r} pairs")
        if generation < 0 or world < 1 or not isinstance(data.get("settings"), dict):
            raise ValueError("generation, world_size or settings out of range")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise refuse(f"it is malformed ({type(exc).__name__}: {exc})") from exc
    return data


@dataclass
class Plan:
    """What rank 0 found and set up: the generation, the positions already done and rank 0's part."""

    generation: int
    done: list[int]
    base: CollectionAttribution | None = None
    complete: CollectionAttribution | None = None
    parts: tuple[Path, ...] = ()

    def shared(self, n_pairs: int) -> tuple[Any, ...]:
        """What every rank needs (broadcast): the complete result, or the generation and done pairs."""
        if self.complete is not None:
            return ("complete", self.complete)
        return ("run", self.generation, encode_positions(self.done, n_pairs))


def _remove(paths: Iterable[Path]) -> None:
    for p in paths:
        for q in (p, p.with_name(p.name + ".json")):
            with contextlib.suppress(FileNotFoundError):
                q.unlink()


def remove_run(ckpt: Path) -> None:
    """Remove everything a run on ``ckpt`` wrote: the result and its sidecar, a sharded run's manifest
    and every part file (with dead writers' temporary files); for starting again over an old run."""
    _remove([ckpt])
    with contextlib.suppress(FileNotFoundError):
        manifest_path(ckpt).unlink()
    _sweep(ckpt, keep=())


def _sweep(ckpt: Path, keep: Iterable[Path]) -> None:
    """Remove part files of ``ckpt`` that no manifest names (orphans of a crash), and dead writers'
    temporary files of the parts and the manifest."""
    keep_names = {p.name for p in keep} | {p.name + ".json" for p in keep}
    pattern = _part_pattern(ckpt)
    targets = set()
    with contextlib.suppress(OSError):
        for name in sorted(p.name for p in ckpt.parent.iterdir()):
            m = pattern.fullmatch(name)
            if m is None:
                continue
            targets.add(m.group(1))
            if m.group(2) is None and name not in keep_names:
                with contextlib.suppress(FileNotFoundError):
                    (ckpt.parent / name).unlink()
    for name in sorted(targets):  # temporary files whose writer is dead (this host)
        remove_stale_temps(ckpt.parent / name)
    remove_stale_temps(manifest_path(ckpt))


def prepare(
    ckpt: Path,
    record: dict[str, Any],
    *,
    n_pairs: int,
    world_size: int,
    resume: bool,
    fresh: Callable[[], CollectionAttribution],
) -> Plan:
    """Rank 0, holding ``ckpt``'s lock: find what is done, fold it into a new generation and commit
    its manifest (see the module docstring). ``fresh()`` makes rank 0's empty statistics.

    Raises:
        InputError: ``ckpt`` or its manifest exists without ``resume``; they were made with other pairs,
            settings or weights.
        CheckpointError: a truncated, corrupt or foreign file, a missing part, parts that overlap.
    """
    manifest = manifest_path(ckpt)
    final = None
    if ckpt.exists():
        if not resume:
            raise InputError(f"checkpoint {ckpt} exists; pass resume=True to continue it, or remove it")
        final = CollectionAttribution.load(ckpt)
        check_record(final.meta, record, ckpt)
        if final.n_done == n_pairs:  # complete: a crash may have left the manifest and parts behind
            old = None
            with contextlib.suppress(CheckpointError):  # an unreadable leftover manifest: just remove it
                old = read_manifest(manifest, n_pairs) if manifest.exists() else None
            _remove([ckpt.with_name(e["file"]) for e in old["parts"]] if old else [])
            _remove([manifest])
            _sweep(ckpt, [])
            final.meta.pop("shard", None)
            return Plan(generation=-1, done=list(range(n_pairs)), complete=final)
    superseded: list[Path] = []
    base: CollectionAttribution | None = None
    done: list[int] = []
    generation = 0
    if manifest.exists():
        if not resume:
            raise InputError(
                f"checkpoint {manifest} (a sharded run's manifest) exists; pass resume=True to continue "
                "it, or remove it and its part files"
            )
        old = read_manifest(manifest, n_pairs)
        check_record(old["settings"], record, manifest)
        seen: set[int] = set()
        for entry in old["parts"]:
            path = ckpt.with_name(entry["file"])
            superseded.append(path)
            if not path.exists():
                if entry["carried"] > 0:
                    raise CheckpointError(
                        f"{path}, a part named by {manifest}, is missing; it held {entry['carried']} pairs. "
                        "Restore it, or delete the manifest and the part files to start over"
                    )
                continue  # a rank that had not checkpointed yet
            part, held = load_part(path, entry, record, n_pairs)
            if len(held) < entry["carried"]:
                raise CheckpointError(
                    f"{path} holds {len(held)} pairs, fewer than the {entry['carried']} it carried when its "
                    "generation began: it is not the file the manifest names"
                )
            overlap = seen.intersection(held)
            if overlap:
                raise CheckpointError(
                    f"{path} holds {len(overlap)} pairs another part of {manifest} holds too: resuming would "
                    "count them twice. Delete the manifest and the part files to start over"
                )
            seen.update(held)
            part.meta.pop("shard", None)
            base = part if base is None else base.merge(part)
        done = sorted(seen)
        generation = int(old["generation"]) + 1
        if final is not None:
            superseded.append(ckpt)  # folded into the manifest's parts before the manifest was written
    elif final is not None:  # a single-process checkpoint: the first n_done pairs of the order
        base, done = final, list(range(final.n_done))
        superseded.append(ckpt)
    parts = tuple(part_path(ckpt, r, world_size, generation) for r in range(world_size))
    rank0 = fresh()
    if base is not None and done:
        truncated = {
            lab: (rank0.meta.get("truncated") or {}).get(lab, 0)
            + (base.meta.get("truncated") or {}).get(lab, 0)
            for lab in LABELS
        }
        meta = dict(rank0.meta)
        rank0 = rank0.merge(base)
        steps = {"n_steps_used": rank0.meta["n_steps_used"]} if "n_steps_used" in rank0.meta else {}
        rank0.meta = meta | {"truncated": truncated} | steps  # earlier generations' per-pair steps kept
        save_part(
            rank0, parts[0], rank=0, world_size=world_size, generation=generation, held=done, n_pairs=n_pairs
        )
    data = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": ckpt.name,
        "generation": generation,
        "world_size": world_size,
        "n_pairs": n_pairs,
        "pairs_fingerprint": record.get("pairs_fingerprint"),
        "settings": _json_ready(record),
        "parts": [
            {"rank": r, "file": p.name, "carried": len(done) if r == 0 else 0} for r, p in enumerate(parts)
        ],
        "done_before": len(done),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(data, indent=1)
    atomic_write(manifest, lambda tmp: tmp.write_text(text))  # the commit of the new generation
    _remove([p for p in superseded if p not in parts])
    _sweep(ckpt, parts)
    return Plan(generation=generation, done=done, base=rank0, parts=parts)


def finish(ckpt: Path, plan: Plan | None) -> None:
    """Rank 0, after writing the result ``ckpt``: remove the parts, then the manifest."""
    if plan is not None:
        _remove(plan.parts)
    _remove([manifest_path(ckpt)])
    _sweep(ckpt, [])

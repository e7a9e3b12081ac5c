"""Resolve a Hugging Face id or local folder and convert a BERT state dict to the hooked port.

Local folders are read directly (``model.safetensors``, or ``pytorch_model.bin`` loaded with
``weights_only=True``). Anything else is treated as a hub id and fetched with
``huggingface_hub.snapshot_download`` (the real code path; offline it fails with a message that says
to pass a local folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mechir_nig.errors import ModelLoadError, UnsupportedArchitectureError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SUPPORTED = (
    "BertForSequenceClassification (cross-encoder, 1 or 2 labels: HookedCrossEncoder)",
    "BertModel (bi-encoder: HookedBiEncoder)",
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "pytorch_model.bin", "vocab.txt", "1_Pooling/*"]


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
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json; pass a folder saved with save_pretrained")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "bert":
        arch = cfg.get("architectures") or [cfg.get("model_type")]
        raise UnsupportedArchitectureError(
            f"{folder} holds a {arch} checkpoint (model_type={cfg.get('model_type')!r}); supported: "
            + "; ".join(SUPPORTED)
        )
    return cfg


def _load_weight_file(p: Path) -> dict[str, torch.Tensor]:
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    return torch.load(p, map_location="cpu", weights_only=True)


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of a folder: one file, or the shards named by a ``*.index.json`` (sharded save)."""
    for fname in WEIGHT_FILES:
        if (folder / fname).is_file():
            return _load_weight_file(folder / fname)
    for index_name in (f + ".index.json" for f in WEIGHT_FILES):
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
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


def load_tokenizer(folder: Path, tokenizer: Any = None) -> Any:
    if tokenizer is not None:
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load a tokenizer from {folder} ({exc}); save one there with "
            "tokenizer.save_pretrained(folder) or pass tokenizer=..."
        ) from exc


def _strip_prefix(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split into (encoder weights without the ``bert.`` prefix, head weights)."""
    body, head = {}, {}
    for k, v in sd.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if k.startswith("bert."):
            body[k[5:]] = v
        elif k.startswith("classifier."):
            head[k] = v
        else:
            body[k] = v
    return body, head


def convert_bert_state_dict(
    sd: dict[str, torch.Tensor], n_layers: int
) -> tuple[dict[str, torch.Tensor], dict]:
    """Map a HF BERT state dict to the hooked port's parameter names.

    Returns (converted weights, leftover head weights such as ``classifier.*``).
    """
    body, head = _strip_prefix(sd)

    def take(key: str) -> torch.Tensor:
        if key not in body:
            raise ModelLoadError(f"checkpoint is missing {key!r}; is it a BERT checkpoint?")
        return body.pop(key)

    out: dict[str, torch.Tensor] = {
        "embed.W_E": take("embeddings.word_embeddings.weight"),
        "embed.W_pos": take("embeddings.position_embeddings.weight"),
        "embed.W_token_type": take("embeddings.token_type_embeddings.weight"),
        "embed.ln.w": take("embeddings.LayerNorm.weight"),
        "embed.ln.b": take("embeddings.LayerNorm.bias"),
    }
    for layer in range(n_layers):
        p = f"encoder.layer.{layer}."
        b = f"blocks.{layer}."
        att = p + "attention."
        out[b + "attn.W_QKV"] = torch.cat([take(att + f"self.{n}.weight") for n in ("query", "key", "value")])
        out[b + "attn.b_QKV"] = torch.cat([take(att + f"self.{n}.bias") for n in ("query", "key", "value")])
        out[b + "attn.W_O_lin"] = take(att + "output.dense.weight")
        out[b + "attn.b_O"] = take(att + "output.dense.bias")
        out[b + "ln1.w"] = take(att + "output.LayerNorm.weight")
        out[b + "ln1.b"] = take(att + "output.LayerNorm.bias")
        out[b + "mlp.W_in_lin"] = take(p + "intermediate.dense.weight")
        out[b + "mlp.b_in"] = take(p + "intermediate.dense.bias")
        out[b + "mlp.W_out_lin"] = take(p + "output.dense.weight")
        out[b + "mlp.b_out"] = take(p + "output.dense.bias")
        out[b + "ln2.w"] = take(p + "output.LayerNorm.weight")
        out[b + "ln2.b"] = take(p + "output.LayerNorm.bias")
    if "pooler.dense.weight" in body:
        out["pooler.W"] = body.pop("pooler.dense.weight")
        out["pooler.b"] = body.pop("pooler.dense.bias")
    body.pop("embeddings.position_ids", None)
    return out, head


def sentence_transformers_settings(folder: Path, pooling: str | None = None) -> tuple[str | None, int | None]:
    """(pooling, max_seq_length) from a sentence-transformers folder, ``None`` where not saved.

    A ``pooling`` given by the caller is returned as is. Otherwise it is read from
    ``1_Pooling/config.json`` (``cls`` or ``mean``; another mode is rejected rather than silently
    replaced).
    """
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

"""Shared parts of the command line: options, validation, loading, the results folder and its run.json.

Every command that produces results writes them into ``--out DIR`` under the names of :data:`LAYOUT`
and records itself in ``DIR/run.json`` (see :class:`Session`); ``docs/cli.md`` documents the layout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mechir_nig.report import FILES, REPORT_NAME

PROG = "mechir-nig"
LAYOUT_VERSION = 1
LAYOUT = {**FILES, "report": REPORT_NAME}
"""File names inside a results folder (``--out DIR``), by what they hold."""
# choices of library options, spelled out so that `--help` needs no torch import (tests/test_cli.py checks
# that they equal the library's)
BASELINES = ("pad", "pad_all", "doc", "mask", "zero")  # attribution.baselines.BASELINES
RULES = (
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)  # rules.RULES
SCHEMES = ("relevant", "nonrelevant", "difference", "abs_mean", "mean_abs")  # attribution.stats.SCHEMES
ABLATION_MODES = ("zero", "mean", "baseline", "resample")  # experiments.pruning._MODES
CONDITIONS = ("nig_top", "random", "bottom", "negative")  # experiments.pruning.CONDITIONS
PATCH_SITES = ("resid_pre", "attn_out", "mlp_out", "heads", "head_pos", "neurons")  # patching.SITES (named)
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_COLLECTION = "embedded"
DEFAULT_OUT = "mechir-nig-results"


# -- errors ------------------------------------------------------------------------------------------
class UsageError(Exception):
    """A bad option value or combination: one line on stderr, exit status 2."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class CommandError(Exception):
    """A failure stated in command-line terms: one line on stderr, exit status 1."""


_CLI_TERMS: list[tuple[str, str]] = [
    (
        r"pass candidates= with sample_nonrelevant_from_candidates=True",
        "pass --negatives-from-bm25 (non-relevant pairs from the BM25 top --k)",
    ),
    (r"sample_nonrelevant_from_candidates(=True)?", "--negatives-from-bm25"),
    (r"remove them from pairs \(or raise max_length\) and run again", "raise --max-length"),
    (r"use another file", "pass another --out (or delete the file)"),
    (r"max_relevant_per_query", "--max-relevant"),
    (r"max_nonrelevant_per_query", "--max-nonrelevant"),
    (r"pass resume=True", "pass --resume"),
    (r"resume=True", "--resume"),
    (r"(pass )?another checkpoint= path", "pass another --out folder"),
    (r"internal_batch_size", "--internal-batch-size"),
    (r"checkpoint_every", "--checkpoint-every"),
    (r"batch_size", "--batch-size"),
    (r"chunk_size", "--chunk-size"),
    (r"max_length", "--max-length"),
    (r"n_steps", "--n-steps"),
    (r"curve_k", "--curve-k"),
    (r"relevance_threshold", "--relevance-threshold"),
]


def cli_terms(message: str) -> str:
    """A library message with its keyword names replaced by the command-line options that set them."""
    for pattern, repl in _CLI_TERMS:
        message = re.sub(rf"(?<![\w-]){pattern}(?![\w])", repl, message)
    return " ".join(message.split())  # one line


# -- help and parsing --------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help (unless the help states it); epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default:" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        default = action.default
        if isinstance(default, list | tuple):
            default = ",".join(str(x) for x in default)
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``) and exit status 2."""

    def error(self, message: str) -> Any:  # argparse calls this for every usage error
        if "expected one argument" in message:
            message += " (give a value that starts with '-' as --option=VALUE)"
        raise UsageError(f"{message} (see {self.prog} --help)", self.prog)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int(text, 0)


def _int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def fraction_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers in [0, 1] (``0`` is the unpruned model)."""
    out = []
    for part in _parts(text):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number") from None
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(
                f"fractions are shares of the ranked neurons, numbers in [0, 1]; got {part}"
            )
        out.append(value)
    return out


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 0."""
    return [nonneg_int(part) for part in _parts(text)]


def str_list(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    return _parts(text)


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: comma-separated names among ``choices``, each once."""

    def parse(text: str) -> list[str]:
        out = _parts(text)
        bad = [x for x in out if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}; choose among {','.join(choices)}"
            )
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a name; list each once")
        return out

    return parse


def _parts(text: str) -> list[str]:
    out = [p.strip() for p in text.split(",") if p.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one value (comma-separated)")
    return out


def add_common(
    p: argparse.ArgumentParser, *, out: str = DEFAULT_OUT, model: bool = True, collection: bool = True
) -> None:
    """``--model``, ``--collection``, ``--out``, ``--device``, ``--no-progress``, ``--debug``."""
    g = p.add_argument_group("common options")
    if model:
        g.add_argument(
            "--model",
            default=None,
            help="a Hugging Face hub id, a local folder (save_pretrained output) or the offline name "
            f"{DEFAULT_MODEL} (default: the model recorded in OUT/run.json, else {DEFAULT_MODEL})",
        )
    if collection:
        g.add_argument(
            "--collection",
            default=None,
            help="'irds:<ir_datasets id>', a folder of documents/queries/qrels files, or 'embedded' (the small "
            f"collection shipped in the package) (default: the collection recorded in OUT/run.json, else "
            f"{DEFAULT_COLLECTION})",
        )
    g.add_argument("--out", default=out, metavar="DIR", help="results folder (layout: docs/cli.md)")
    if model:
        g.add_argument(
            "--device", default="auto", help="torch device; 'auto' is cuda when available, else cpu"
        )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    g.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error (default: off)",
    )


# -- loading -----------------------------------------------------------------------------------------
def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec)


def check_model_spec(spec: str) -> None:
    """Refuse a ``--model`` path that does not exist (a hub id is checked when it is fetched)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(
                f"--model {spec}: a file; pass the folder that holds config.json and the weights"
            )
        return
    if _looks_like_path(spec):
        raise UsageError(
            f"--model {spec}: no such folder; pass a local model folder, a Hugging Face hub id or {DEFAULT_MODEL}"
        )


def check_collection_spec(spec: str) -> None:
    """Refuse a ``--collection`` that is neither ``embedded``, ``irds:<id>`` nor an existing folder."""
    if spec == "embedded":
        return
    if spec.startswith("irds:"):
        if not spec[len("irds:") :].strip():
            raise UsageError("--collection irds: needs an ir_datasets id after the colon, e.g. irds:vaswani")
        return
    path = Path(spec).expanduser()
    if path.is_file():
        raise UsageError(
            f"--collection {spec}: a file; pass the folder holding the documents, queries and qrels"
        )
    if not path.is_dir():
        raise UsageError(
            f"--collection {spec}: no such folder; pass 'embedded', 'irds:<ir_datasets id>' or a folder of "
            "documents, queries and qrels files"
        )


def _spec_record(spec: str) -> str:
    """What to pass again to reproduce: an existing local path made absolute, anything else as given."""
    path = Path(spec).expanduser()
    if path.exists() and spec != "embedded":
        return str(path.resolve())
    return spec


def read_run(out: Path) -> dict[str, Any]:
    """``out/run.json`` as a dict (``{}`` when absent or unreadable)."""
    try:
        data = json.loads((out / LAYOUT["run"]).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def versions() -> dict[str, str]:
    """Versions of mechir_nig, torch, transformers and Python, and the platform."""
    from importlib import metadata

    import mechir_nig

    out = {}
    try:
        out["mechir_nig"] = metadata.version("mechir-nig")
    except metadata.PackageNotFoundError:
        out["mechir_nig"] = mechir_nig.__version__
    for name in ("torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def to_json(obj: Any) -> Any:
    """JSON-ready copy: paths and other objects as strings, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    from mechir_nig._io import atomic_write

    text = json.dumps(to_json(obj), indent=1)
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# -- one command's run ---------------------------------------------------------------------------------
class Session:
    """One command run: loads the model and collection (once, shared with the demo's other stages),
    times its stages and records itself in ``OUT/run.json``.

    ``run.json`` holds the record of the last command that wrote into the folder at the top level
    (``command``, ``argv``, ``model``, ``collection``, ``settings``, ``outputs``, ``started``,
    ``finished``, ``seconds``, ``timings``, ``versions``) and every command's record, oldest first,
    under ``history``.
    """

    def __init__(self, args: argparse.Namespace, argv: Sequence[str], cache: dict[str, Any] | None = None):
        self.args = args
        self.argv = list(argv)
        self.command: str = args.command
        self.prog = f"{PROG} {self.command}"
        self.out = Path(args.out).expanduser()
        self.progress = not getattr(args, "no_progress", False)
        self.cache = {} if cache is None else cache
        self.timings: dict[str, float] = {}
        self.started = _now()
        self.t0 = time.perf_counter()
        self.outputs: list[str] = []
        previous = read_run(self.out)
        if hasattr(args, "model"):
            if args.model is None:
                args.model = (previous.get("model") or {}).get("spec") or DEFAULT_MODEL
            check_model_spec(args.model)
        if hasattr(args, "collection"):
            if args.collection is None:
                args.collection = (previous.get("collection") or {}).get("spec") or DEFAULT_COLLECTION
            check_collection_spec(args.collection)

    @property
    def main(self) -> bool:
        """Whether this process prints and writes results: always, except on ranks > 0 of a torchrun
        launch (every rank computes; rank 0 reports)."""
        from mechir_nig.runtime.distributed import is_main

        return is_main()

    def say(self, message: str) -> None:
        """A line of the command's report on stdout (rank 0 only under torchrun)."""
        if self.main:
            print(message, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (added to ``timings`` in run.json)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)

    def device(self) -> str:
        dev = getattr(self.args, "device", "auto")
        if dev != "auto":
            return dev
        import torch

        from mechir_nig.runtime.distributed import launch_info, local_device

        if launch_info() is not None:  # torchrun: each rank on its own GPU (cuda:LOCAL_RANK), else the CPU
            return str(local_device())
        return "cuda" if torch.cuda.is_available() else "cpu"

    def model(self) -> Any:
        """The ``--model``, loaded once (``ModelLoadError`` in command-line terms)."""
        from mechir_nig.errors import ModelLoadError, UnsupportedArchitectureError

        key = f"model|{self.args.model}|{self.device()}"
        if key not in self.cache:
            from mechir_nig.models import load_model

            with self.stage("load_model"):
                try:
                    self.cache[key] = load_model(self.args.model, device=self.device())
                except (ModelLoadError, UnsupportedArchitectureError) as exc:
                    msg = str(exc).replace(
                        "e.g. from_pretrained('/path/to/folder')", "e.g. --model /path/to/folder"
                    )
                    msg = msg.replace(
                        "HookedBiEncoder.from_pretrained(path, ignore_head=True)", "the Python API"
                    )
                    raise CommandError(f"--model {self.args.model}: {msg}") from exc
                except ImportError as exc:
                    raise CommandError(f"--model {self.args.model}: {exc}") from exc
        return self.cache[key]

    def collection(self) -> Any:
        """The ``--collection``, loaded once."""
        key = f"collection|{self.args.collection}"
        if key not in self.cache:
            from mechir_nig.data import load_collection

            with self.stage("load_collection"):
                self.cache[key] = load_collection(self.args.collection)
        return self.cache[key]

    def fingerprint(self, model: Any) -> str:
        key = f"fingerprint|{id(model)}"
        if key not in self.cache:
            from mechir_nig.attribution.settings import model_fingerprint

            self.cache[key] = model_fingerprint(model)
        return self.cache[key]

    def path(self, what: str) -> Path:
        """``OUT/<LAYOUT[what]>``, with OUT created."""
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out / LAYOUT[what]

    def wrote(self, path: Path) -> None:
        self.outputs.append(path.name)

    def model_record(self) -> dict[str, Any] | None:
        if not hasattr(self.args, "model"):
            return None
        m = self.cache.get(f"model|{self.args.model}|{self.device()}")
        if m is None:
            return None
        cfg = m.cfg
        return {
            "spec": _spec_record(self.args.model),
            "id": self.args.model,
            "class": type(m).__name__,
            "name": str(getattr(cfg, "model_name", "")),
            "fingerprint": self.fingerprint(m),
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "d_model": cfg.d_model,
            "d_mlp": cfg.d_mlp,
            "dtype": str(cfg.dtype),
            "device": self.device(),
        }

    def collection_record(self) -> dict[str, Any] | None:
        key = f"collection|{getattr(self.args, 'collection', None)}"
        if key not in self.cache:
            return None
        col = self.cache[key]
        docs = col.docs
        n_docs = len(docs) if isinstance(docs, dict) else getattr(docs, "count", None)
        return {
            "spec": _spec_record(self.args.collection),
            "name": col.name,
            "queries": len(col.queries),
            "qrels": len(col.qrels),
            "docs": n_docs,
            "relevance_threshold": col.relevance_threshold,
        }

    def record(self, settings: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> Path:
        """Add this command's record to ``OUT/run.json`` (written atomically; rank 0 only under torchrun)."""
        args = {
            k: v
            for k, v in vars(self.args).items()
            if k not in ("func", "command", "debug") and not callable(v)
        }
        rec: dict[str, Any] = {
            "command": self.command,
            "argv": self.argv,
            "model": self.model_record(),
            "collection": self.collection_record(),
            "settings": {**args, **(settings or {})},
            "outputs": self.outputs,
            "summary": summary or {},
            "started": self.started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - self.t0, 3),
            "timings": self.timings,
            "versions": versions(),
        }
        if not self.main:
            return self.path("run")
        previous = read_run(self.out)
        old = previous.get("history")
        history: list[Any] = old if isinstance(old, list) else []
        data = {"layout": LAYOUT_VERSION, **rec, "history": [*history, rec]}
        return write_json(self.path("run"), data)


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

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
from typing import TYPE_CHECKING, Any

from mechir_nig.findings import patching_notes as patching_notes  # re-exported for `patch`
from mechir_nig.report import (
    CIRCUIT_FILES,
    FILES,
    LAYOUT_VERSION,
    REPORT_NAME,
    attribution_incomplete,
    check_layout,
)
from mechir_nig.report import site_summaries as site_summaries  # re-exported for `patch`

if TYPE_CHECKING:
    from mechir_nig.models.protocol import HookedModel

PROG = "mechir-nig"


def say_folder_findings(say: Any, folder: Path) -> None:
    """:func:`say_findings` of the results in ``folder`` (``mechir_nig.findings.folder_findings``); a
    failure to state them is said, not raised (the command's own work is done)."""
    try:
        from mechir_nig.findings import folder_findings

        sentences = [sentence for _, sentence in folder_findings(folder)]
    except Exception as exc:
        say(f"note: the findings could not be stated ({type(exc).__name__}: {exc})")
        return
    say_findings(say, sentences)


def say_findings(say: Any, sentences: list[str]) -> None:
    """Print the findings (``mechir_nig.findings``) at the end of a command: a heading, one line each."""
    if sentences:
        say("\nFindings:")
        for sentence in sentences:
            say(f"- {sentence}")


LAYOUT = {**FILES, **CIRCUIT_FILES, "report": REPORT_NAME}
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
PATCH_SITES = (
    "resid_pre",
    "attn_out",
    "mlp_out",
    "heads",
    "head_pos",
    "neurons",
    "q",
    "k",
    "v",
    "pattern",
    "ln1_scale",
    "ln1_normalized",
    "ln2_scale",
    "ln2_normalized",
)  # patching.SITES
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
    (r"pass allow_incomplete=True", "pass --allow-incomplete"),
    (r"resume=True", "--resume"),
    (r"(pass )?another checkpoint= path", "pass another --out folder"),
    (r"internal_batch_size", "--internal-batch-size"),
    (r"window_padding", "--window-padding"),
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
    """An ArgumentParser whose errors are one line (``prog: error: ...``) and exit status 2; options must
    be spelled in full (``allow_abbrev=False``: ``--n-step`` is not ``--n-steps``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

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


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def padding(text: str) -> float:
    """argparse type: a number in [0, 1) (``--window-padding``)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), e.g. 0.125; got {text}")
    return value


def fraction_list(text: str) -> list[float]:
    """argparse type: comma-separated numbers in [0, 1] (``0`` is the unpruned model)."""
    out = []
    for part in _parts(text):
        value = _number(part)
        if not 0 <= value <= 1:
            raise argparse.ArgumentTypeError(
                f"fractions are shares of the ranked neurons, numbers in [0, 1]; got {part}"
            )
        out.append(value)
    return out


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 0."""
    return [nonneg_int(part) for part in _parts(text)]


def word(text: str) -> str:
    """argparse type: a non-empty text (an empty ``--term ""`` is refused, not taken as no term)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a word, or leave the option out for its default")
    return text


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
            "--template",
            default=None,
            metavar="NAME",
            help="the rerank template of a decoder LLM or monoT5 --model (built-ins: monot5, qwen3-reranker); "
            "refused for an encoder (default: the template recorded in OUT/run.json for this model, else "
            "the one its hub id implies)",
        )
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


def add_command(
    sub: Any, name: str, run: Callable[..., Any], help: str, description: str, epilog: str, **common: Any
) -> argparse.ArgumentParser:
    """The parser of command ``name``: its texts, the common options (:func:`add_common` with
    ``common``) and ``run`` as the function it calls."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description, epilog=epilog)
    add_common(p, **common)
    p.set_defaults(func=run)
    return p


OPTIONS: dict[str, dict[str, Any]] = {
    "--n-steps": {"type": positive_int, "default": 16, "help": "NIG integration steps"},
    "--batch-size": {"type": positive_int, "help": "pairs per NIG call"},
    "--k": {"type": positive_int},
    "--seed": {"type": int, "default": 0},
    "--split-seed": {"type": int, "default": 0},
    "--seeds": {"type": positive_int, "default": 3, "help": "random sets per fraction"},
    "--measures": {"type": str_list, "default": ["nDCG@10", "RR@10"], "help": "ir_measures names"},
    "--internal-batch-size": {
        "type": positive_int,
        "default": None,
        "help": "interpolation points per forward/backward (memory only; default: automatic)",
    },
    "--max-length": {
        "type": positive_int,
        "default": None,
        "help": "tokens per input (default: the model's)",
    },
    "--layers": {"type": int_list, "default": None},
    "--fractions": {"type": fraction_list, "default": [0.01, 0.05]},
    "--modes": {"type": choice_list(ABLATION_MODES), "default": ["zero", "baseline"]},
    "--sites": {"type": choice_list(PATCH_SITES)},
    "--chunk-size": {"type": positive_int},
}
"""Options several commands share: their type and usual default, completed per command by :func:`option`."""


def option(g: Any, name: str, **kw: Any) -> None:
    """Add the shared option ``name`` (:data:`OPTIONS`) to the group ``g``, ``kw`` overriding its spec."""
    g.add_argument(name, **{**OPTIONS[name], **kw})


def add_pair_options(g: Any) -> None:
    """The judged-pair options of ``attribute`` (and ``compare``) in group ``g``: ``--split-seed``,
    ``--max-relevant``, ``--max-nonrelevant``, ``--negatives-from-bm25``, ``--k``, ``--seed``."""
    option(g, "--split-seed", help="seed of the selection / evaluation split")
    g.add_argument(
        "--max-relevant",
        type=nonneg_int,
        default=None,
        help="at most this many relevant pairs per query (default: all)",
    )
    g.add_argument(
        "--max-nonrelevant",
        type=nonneg_int,
        default=None,
        help="at most this many non-relevant pairs per query (default: all)",
    )
    g.add_argument(
        "--negatives-from-bm25",
        action="store_true",
        help="non-relevant pairs from the BM25 top --k (judged non-relevant and unjudged candidates); for "
        "collections that judge only relevant documents",
    )
    option(g, "--k", default=100, help="BM25 depth for --negatives-from-bm25")
    option(g, "--seed", help="seed of the per-query sampling of pairs")


def steps_arg(text: str) -> int | str:
    """argparse type: an integer >= 1 or ``auto``."""
    return "auto" if text == "auto" else positive_int(text)


def add_nig_options(p: argparse.ArgumentParser) -> None:
    """The NIG options of ``attribute`` (and ``compare``): a group ``NIG`` of ``p``."""
    g = p.add_argument_group("NIG")
    option(
        g,
        "--n-steps",
        type=steps_arg,
        default=16,
        help="intervals of the integration rule, or 'auto': per pair, grids doubled from --min-steps until "
        "completeness holds to --tol (at most --max-steps); each pair's steps are recorded",
    )
    g.add_argument("--tol", type=float, default=None, help="--n-steps auto: completeness tolerance (0.01)")
    g.add_argument("--min-steps", type=positive_int, default=None, help="--n-steps auto: first grid (8)")
    g.add_argument(
        "--max-steps", type=positive_int, default=None, help="--n-steps auto: cap, min-steps x 2^k (512)"
    )
    g.add_argument("--baseline", choices=BASELINES, default="pad", help="the baseline input")
    g.add_argument("--method", choices=RULES, default="riemann_trapezoid", help="the integration rule")
    option(g, "--layers", help="comma-separated layers to attribute (default: all)")
    g.add_argument(
        "--side",
        choices=("doc", "query"),
        default=None,
        help="bi-encoders: the side interpolated from the baseline (default: doc)",
    )
    option(g, "--max-length")
    g.add_argument(
        "--window-padding",
        type=padding,
        default=None,
        help="end a window of interpolation points before a pair it would pad by more than this fraction "
        "of its longest pair (e.g. 0.125: faster on the CPU for pairs of mixed lengths; values change by "
        "float round-off only) (default: off)",
    )


def nig_settings(args: argparse.Namespace, layers: list[int] | None) -> Any:
    """The ``NIGSettings`` of :func:`add_nig_options`' options (``--internal-batch-size`` when the
    command has it); the ``auto`` options refused without ``--n-steps auto``."""
    from mechir_nig.attribution.settings import NIGSettings

    auto = {"tol": args.tol, "min_steps": args.min_steps, "max_steps": args.max_steps}
    if args.n_steps != "auto" and any(v is not None for v in auto.values()):
        raise UsageError("--tol, --min-steps and --max-steps apply only to --n-steps auto")
    return NIGSettings(
        **(auto if args.n_steps == "auto" else {}),
        n_steps=args.n_steps,
        baseline=args.baseline,
        method=args.method,
        layers=layers,
        side=args.side,
        max_length=args.max_length,
        internal_batch_size=getattr(args, "internal_batch_size", None),
        window_padding=args.window_padding,
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


def load_attribution(
    path: Path, allow_incomplete: bool, say: Callable[[str], None]
) -> tuple[Any, str | None]:
    """The attribution at ``path`` and, when it holds fewer pairs than its run planned (a stopped
    ``attribute``), what it holds: refused (``CommandError``) unless ``allow_incomplete``, and then said."""
    from mechir_nig.attribution.stats import CollectionAttribution

    stats = CollectionAttribution.load(path)
    incomplete = attribution_incomplete(stats)
    if incomplete is not None:
        if not allow_incomplete:
            raise CommandError(
                f"{path} is incomplete: it holds {incomplete} (its attribute run was stopped). Finish it "
                f"with mechir-nig attribute --resume --out {path.parent}, or pass --allow-incomplete to use "
                "it as it is (flagged in the output and the report)"
            )
        say(f"note: --allow-incomplete: {path} holds only {incomplete}; the results below rest on those")
    return stats, incomplete


def read_run(out: Path) -> dict[str, Any]:
    """``out/run.json`` as a dict (``{}`` when absent or unreadable); ``CommandError`` when it is of a
    layout version this mechir_nig does not know."""
    path = out / LAYOUT["run"]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    try:
        check_layout(data, path)
    except Exception as exc:
        raise CommandError(f"{exc}; or pass another --out") from exc
    return data


def check_device(spec: str) -> None:
    """Refuse a ``--device`` torch does not know or this machine lacks (e.g. ``cuda`` without CUDA), in
    command-line terms, before anything is loaded."""
    if spec == "auto":
        return
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {spec}: not a torch device; pass auto, cpu, cuda, cuda:N or mps"
        ) from None
    fix = "pass --device cpu, or --device auto (cuda when available, else cpu)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (no driver, or CUDA_VISIBLE_DEVICES hides them)"
            )
            raise UsageError(f"--device {spec}: CUDA is not available on this machine ({why}); {fix}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UsageError(f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0-{n - 1}); {fix}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {spec}: MPS (Apple GPU) is not available on this machine; {fix}")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {spec}: mechir-nig runs on cpu, cuda or mps; {fix}")


_DISK_FULL = re.compile(r"No space left on device|StorageFull|Disk quota exceeded|os error 28", re.I)
_GPU_MEMORY = re.compile(r"CUDA out of memory|CUBLAS_STATUS_ALLOC_FAILED|MPS backend out of memory", re.I)
_NO_CUDA = re.compile(
    r"Torch not compiled with CUDA|no NVIDIA driver|CUDA driver version is insufficient", re.I
)


def explain_failure(exc: BaseException, out: Path | None = None) -> str | None:
    """What happened and what to do, for failures of the machine rather than of mechir_nig (a full disk,
    GPU memory, a missing CUDA); ``None`` for anything else."""
    import errno

    text = str(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or _DISK_FULL.search(text):
        folder = f" --out {out}" if out is not None else " the output folder"
        return (
            f"the disk is full{where}: nothing more could be written into{folder}. Free some space or pass "
            "an --out folder on another disk, and run again (attribute --resume continues from its last "
            "checkpoint)"
        )
    if type(exc).__name__ == "OutOfMemoryError" or _GPU_MEMORY.search(text):
        return (
            "the GPU ran out of memory: lower --batch-size (and --internal-batch-size or --chunk-size where "
            "the command has them), or pass --device cpu"
        )
    if _NO_CUDA.search(text):
        return f"CUDA is not usable on this machine ({text.split('.')[0]}): pass --device cpu"
    return None


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
    (``command``, ``argv``, ``status``, ``run_id``, ``model``, ``collection``, ``settings``, ``outputs``,
    ``started``, ``finished``, ``seconds``, ``timings``, ``versions``) and every command's record, oldest
    first, under ``history``.

    Before any work it checks the inputs (``--model``, ``--collection``, ``--device``) and that the output
    can be written (:meth:`_probe`, the one place every command's ``--out`` is checked); ``main`` then
    calls :meth:`begin` (the run's inputs recorded in run.json, ``status: running``) and, when the command
    fails, :meth:`abort`.
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
        self.previous = previous  # OUT/run.json as this command found it
        if hasattr(args, "model"):
            recorded = previous.get("model") or {}
            if args.model is None:
                args.model = recorded.get("spec") or DEFAULT_MODEL
            check_model_spec(args.model)
            if getattr(args, "template", None) is None and recorded.get("spec") == _spec_record(args.model):
                args.template = recorded.get("template")  # the recorded model's template goes with it
        if hasattr(args, "collection"):
            if args.collection is None:
                args.collection = (previous.get("collection") or {}).get("spec") or DEFAULT_COLLECTION
            check_collection_spec(args.collection)
        if hasattr(args, "device"):
            check_device(args.device)
        self.run_id = f"{platform.node()}.{os.getpid()}.{time.time_ns()}"
        self.created: list[Path] = []  # folders the probe created (deepest first), removed if left empty
        self._before: tuple[bytes | None, dict[str, tuple[int, int]]] | None = None
        self._probe()

    # -- the output, before any work -------------------------------------------------------------------
    def _probe(self) -> None:
        """Check, before any work, that the command can write its output: ``--out`` (a folder) for every
        command, the HTML file for ``report``. An empty ``--out``, a file where the folder should be, or
        a folder where ``report -o`` needs a file is a ``UsageError``; an unwritable place a
        ``CommandError``. The folders created here are removed again if the command fails leaving them
        empty (:meth:`discard_empty`)."""
        args = self.args
        if not str(args.out).strip():
            raise UsageError("--out is empty; pass the results folder, e.g. --out results")
        if self.command == "report":
            results = Path(args.results_dir).expanduser() if args.results_dir is not None else self.out
            if args.output is not None and not str(args.output).strip():
                raise UsageError(f"-o is empty; pass the HTML file to write, e.g. -o {LAYOUT['report']}")
            if not results.is_dir():
                return  # `report` refuses it, naming the folder
            output = Path(args.output).expanduser() if args.output is not None else results / LAYOUT["report"]
            if output.is_dir():
                raise UsageError(
                    f"-o {args.output or output}: a folder; pass the HTML file to write, e.g. "
                    f"-o {output / LAYOUT['report']}"
                )
            self._writable(output.parent, f"-o {output}")
            return
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(
                f"--out {args.out}: a file, not a folder; pass the results folder (new, or one the "
                "mechir-nig commands wrote)"
            )
        self._writable(self.out, f"--out {args.out}")

    def _writable(self, folder: Path, option: str) -> None:
        from mechir_nig._io import temp_path

        missing = []
        p = folder.absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.created = missing
            tmp = temp_path(folder / ".mechir-nig-write-probe")
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            self.discard_empty()
            raise CommandError(
                f"{option}: cannot write there ({exc.strerror or exc}); nothing was run. Pass a folder you "
                "can write to, or make this one writable, and run again"
            ) from exc

    def discard_empty(self) -> None:
        """Remove the folders this command created when they hold nothing (a failed command leaves no
        empty results folder behind)."""
        for folder in self.created:
            with contextlib.suppress(OSError):
                for root, _dirs, _files in os.walk(folder, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(root)
        self.created = []

    def _listing(self) -> dict[str, tuple[int, int]]:
        """Size and time of the files in OUT and its sub-folders (one level: the commands write no
        deeper), run.json aside: what a command wrote shows as a change."""
        out: dict[str, tuple[int, int]] = {}
        with contextlib.suppress(OSError):
            for path in self.out.iterdir():
                inner = list(path.iterdir()) if path.is_dir() else [path]
                for f in inner:
                    if f.name != LAYOUT["run"] and f.is_file():
                        st = f.stat()
                        out[str(f.relative_to(self.out))] = (st.st_size, st.st_mtime_ns)
        return out

    def begin(self) -> None:
        """Record the run's inputs (model, collection, settings; ``status: running``) in ``OUT/run.json``
        before any work, so that a run that is killed still says what it ran on (``--resume`` then
        finds its ``--model`` and ``--collection``). Commands that write no results record nothing."""
        if not self.main or not hasattr(self.args, "model"):
            return
        path = self.out / LAYOUT["run"]
        previous = path.read_bytes() if path.is_file() else None
        self._write(self._rec(status="running"))
        self._before = (previous, self._listing())

    def abort(self, status: str, error: str) -> None:
        """After a failure: when the command wrote nothing but its ``begin`` record, ``run.json`` is put
        back as it was; otherwise (a checkpoint, a result) its record stays, with ``status`` and the
        ``error``. Then the folders it created are removed if empty."""
        if self._before is not None and self.main:
            previous, listing = self._before
            path = self.out / LAYOUT["run"]
            with contextlib.suppress(OSError):
                if self._listing() != listing:
                    rec = self._rec(status=status)
                    rec["error"] = error
                    self._write(rec)
                elif previous is None:
                    path.unlink()
                else:
                    from mechir_nig._io import atomic_write

                    atomic_write(path, lambda tmp: tmp.write_bytes(previous))
            self._before = None
        self.discard_empty()

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
        from mechir_nig.errors import InputError, ModelLoadError, UnsupportedArchitectureError

        key = f"model|{self.args.model}|{getattr(self.args, 'template', None)}|{self.device()}"
        if key not in self.cache:
            from mechir_nig.models import load_model

            with self.stage("load_model"):
                try:
                    template = getattr(self.args, "template", None)
                    kw = {"template": template} if template is not None else {}
                    self.cache[key] = load_model(self.args.model, device=self.device(), **kw)
                except (
                    InputError
                ) as exc:  # a --template the model does not take, or an unknown one: a bad option
                    msg = str(exc).replace("template=", "--template")
                    raise UsageError(f"--template {template}: {msg}", self.prog) from exc
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

    def fingerprint(self, model: HookedModel) -> str:
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

    def save(self, what: str, write: Callable[[Path], Any]) -> Path:
        """``write(OUT/<LAYOUT[what]>)`` on rank 0 only (under torchrun every rank holds the gathered
        result), listed among the outputs."""
        out = self.path(what)
        if self.main:
            write(out)
        self.wrote(out)
        return out

    def model_record(self) -> dict[str, Any] | None:
        """The model's record (its spec alone while it is not loaded yet)."""
        if not hasattr(self.args, "model"):
            return None
        template = getattr(self.args, "template", None)
        m = self.cache.get(f"model|{self.args.model}|{template}|{self.device()}")
        if m is None:
            return {"spec": _spec_record(self.args.model), "id": self.args.model, "template": template}
        cfg = m.cfg
        return {
            "spec": _spec_record(self.args.model),
            "id": self.args.model,
            "template": template,
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
        """The collection's record (its spec alone while it is not loaded yet)."""
        if not hasattr(self.args, "collection"):
            return None
        key = f"collection|{self.args.collection}"
        if key not in self.cache:
            return {"spec": _spec_record(self.args.collection)}
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

    def _rec(
        self,
        settings: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        status: str = "finished",
    ) -> dict[str, Any]:
        args = {
            k: v
            for k, v in vars(self.args).items()
            if k not in ("func", "command", "debug") and not callable(v)
        }
        return {
            "command": self.command,
            "argv": self.argv,
            "status": status,
            "run_id": self.run_id,
            "model": self.model_record(),
            "collection": self.collection_record(),
            "settings": {**args, **(settings or {})},
            "outputs": self.outputs,
            "summary": summary or {},
            "started": self.started,
            "finished": None if status == "running" else _now(),
            "seconds": round(time.perf_counter() - self.t0, 3),
            "timings": self.timings,
            "versions": versions(),
        }

    def _write(self, rec: dict[str, Any]) -> Path:
        """``rec`` as the top-level record of ``OUT/run.json``, last in its history (replacing this run's
        ``begin`` record)."""
        previous = read_run(self.out)
        old = previous.get("history")
        history = [
            h
            for h in (old if isinstance(old, list) else [])
            if not (isinstance(h, dict) and h.get("run_id") == self.run_id)
        ]
        data = {"layout": LAYOUT_VERSION, **rec, "history": [*history, rec]}
        return write_json(self.path("run"), data)

    def record(self, settings: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> Path:
        """Add this command's record to ``OUT/run.json`` (written atomically; rank 0 only under torchrun)."""
        if not self.main:
            return self.path("run")
        self._before = None  # finished: a later failure keeps the record
        return self._write(self._rec(settings, summary))


def eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

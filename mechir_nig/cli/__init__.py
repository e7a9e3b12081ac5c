"""Command line: ``mechir-nig attribute | prune | patch | faithfulness | circuits | compare | report | rerank | stability |
demo``.

Every command that produces results writes them into its ``--out DIR`` (``run.json``,
``attribution.safetensors``, ``pruning.json``, ``patching.safetensors``, ``faithfulness.json``,
``rerank.json``, ``stability.json``; see ``docs/cli.md``), so that ``mechir-nig report DIR`` finds them.
User errors print one line, ``mechir-nig <command>: error: ...``, and exit with status 2 (a bad option)
or 1 (a failure); ``--debug`` shows the traceback.

Example:
    >>> from mechir_nig.cli import main
    >>> main(["demo", "--out", "mechir-nig-demo"])  # the main job, into ./mechir-nig-demo  # doctest: +SKIP
    0
    >>> import tempfile
    >>> main(["report", tempfile.mkdtemp()])  # an empty folder: one error line on stderr, status 2
    2
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from mechir_nig.cli._common import (
    LAYOUT,
    PROG,
    CommandError,
    HelpFormatter,
    Parser,
    Session,
    UsageError,
    cli_terms,
    eprint,
    explain_failure,
    versions,
)

__all__ = ["COMMANDS", "LAYOUT", "build_parser", "main"]

COMMANDS = (
    "attribute",
    "prune",
    "patch",
    "faithfulness",
    "circuits",
    "compare",
    "report",
    "rerank",
    "stability",
    "demo",
)

DESCRIPTION = """Mechanistic interpretability for neural IR models: Neuron Integrated Gradients (NIG) of
cross- and bi-encoders over a test collection, validated by pruning and activation patching.

Results go into the --out folder, one file per kind (docs/cli.md):
  run.json                  what ran: command, argv, model (+ fingerprint), collection, settings,
                            versions, start/end times and timings; every command under "history"
  attribution.safetensors   NIG statistics per label (+ attribution.safetensors.json)   attribute
  pruning.json              the pruning study                                            prune
  patching.safetensors      activation patching (+ patching.safetensors.json)            patch
  faithfulness.json         single-neuron ablations vs NIG                               faithfulness
  rerank.json               BM25 vs the model's re-ranking                               rerank
  stability.json            split-half stability of the top neurons                      stability
  attribution_patching.safetensors, interaction.json, attention_groups.safetensors,
  path_patching.safetensors, path_patching_heads.safetensors                          circuits
  compare.json              sets, overlaps, core/OOD neurons, transfer pruning           compare
  report.html               everything above as one self-contained HTML file             report"""

EPILOG = """examples:
  mechir-nig demo                                  # the main job on the embedded collection, offline
  mechir-nig demo --model cross-encoder/ms-marco-MiniLM-L-6-v2 --collection irds:vaswani
  mechir-nig attribute --out results && mechir-nig prune --out results && mechir-nig report results

exit status: 0 success, 1 a failure (model, data, files), 2 a bad option; --debug shows tracebacks."""


def _version() -> str:
    v = versions()
    return f"{PROG} {v['mechir_nig']} (torch {v['torch']}, transformers {v['transformers']}, python {v['python']})"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from mechir_nig.cli import (
        attribute,
        circuits,
        compare,
        demo,
        faithfulness,
        patch,
        prune,
        report,
        rerank,
        stability,
    )

    ap = Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    ap.add_argument("--version", action="version", version=_version(), help="print the versions and exit")
    ap.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    class _Sub:  # every sub-parser gets the formatter and the `mechir-nig <command>` prog
        def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
            if "description" in kw:
                kw["description"] = textwrap.fill(kw["description"], 100)
            return sub.add_parser(name, formatter_class=HelpFormatter, **kw)

    for module in (attribute, prune, patch, faithfulness, circuits, compare, report, rerank, stability, demo):
        module.add_parser(_Sub())
    return ap


SHARDED = ("attribute", "prune", "patch", "faithfulness", "rerank", "stability", "demo")
"""Commands that spread their work over the ranks of a torchrun launch (the others would repeat it)."""


def _check_launch(command: str) -> None:
    """Refuse a multi-process torchrun launch of a command that is not sharded (every rank would repeat
    the whole work and write the same files)."""
    from mechir_nig.runtime.distributed import launch_info

    launch = launch_info()
    if launch is not None and launch.world_size > 1 and command not in SHARDED:
        raise UsageError(
            f"'{command}' does not shard its work over torchrun ranks (only {', '.join(SHARDED)} do): "
            f"run it without torchrun, or with --nproc-per-node 1"
        )


def _abort(session: Session | None, status: str, error: str) -> None:
    """A failed command: its run.json record and the empty folders it created (``Session.abort``)."""
    if session is not None:
        try:
            session.abort(status, error)
        except Exception as exc:  # the cleanup must never hide the failure itself
            eprint(f"{PROG}: warning: could not clean up after the failure ({type(exc).__name__}: {exc})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 failure, 2 bad option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    prog = PROG
    with warnings.catch_warnings():
        seen: set[str] = set()

        def show(
            message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None
        ) -> None:
            text = f"{prog}: warning: {cli_terms(str(message))}"
            if text not in seen:
                seen.add(text)
                eprint(text)

        warnings.showwarning = show
        session: Session | None = None
        try:
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            debug = debug or bool(getattr(args, "debug", False))
            prog = f"{PROG} {args.command}"
            if extra:  # said by the command's parser, not the top-level one
                raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)", prog)
            _check_launch(args.command)
            session = Session(args, argv)  # checks the inputs and probes the output before any work
            session.begin()
            args.func(args, session)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0
        except KeyboardInterrupt:
            _abort(session, "interrupted", "interrupted")
            command = prog.removeprefix(PROG).strip() or "attribute"
            resumable = command if command in ("attribute", "prune") else "attribute"
            eprint(f"{prog}: interrupted ({resumable} --resume continues from the last checkpoint)")
            return 130
        except Exception as exc:  # a UsageError exits with 2, any other failure with 1
            from mechir_nig.errors import MechirNigError

            if debug:
                traceback.print_exc()
            usage = isinstance(exc, UsageError)
            known = None if usage else explain_failure(exc, session.out if session is not None else None)
            if known is not None:
                message = known
            elif isinstance(exc, UsageError | CommandError | MechirNigError | OSError):
                message = cli_terms(str(exc))
            else:
                message = f"unexpected {type(exc).__name__}: {cli_terms(str(exc))}" + (
                    "" if debug else " (rerun with --debug for the traceback, and please report it)"
                )
            _abort(session, "failed", message)
            eprint(f"{(exc.prog if isinstance(exc, UsageError) else None) or prog}: error: {message}")
            return 2 if usage else 1
    return 0

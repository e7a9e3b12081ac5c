"""``mechir-nig report``: one self-contained HTML file from a results folder (``mechir_nig.report.build``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mechir_nig.cli._common import LAYOUT, CommandError, Session, UsageError, add_command, load_attribution

EPILOG = """example:
  mechir-nig report results                   # writes results/report.html
  mechir-nig report results -o ~/shared/nig-report.html"""

HELP = "build a self-contained HTML report (figures and tables) from a results folder"
DESCRIPTION = (
    "Read the results a folder holds (run.json, attribution, pruning, patching, "
    "faithfulness, rerank, stability; see docs/cli.md) and write one HTML file with their figures "
    "and tables that works offline."
)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "report", run, HELP, DESCRIPTION, EPILOG, model=False, collection=False)
    p.add_argument(
        "results_dir",
        nargs="?",
        default=None,
        metavar="RESULTS_DIR",
        help="the results folder (default: --out)",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help=f"the HTML file (default: RESULTS_DIR/{LAYOUT['report']})",
    )
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="report an attribution that holds fewer pairs than its run planned (a stopped attribute), "
        "flagged as incomplete in the report; without it such an attribution is refused",
    )


def build(results: Path, output: Path, *, allow_incomplete: bool = False) -> Path:
    """``mechir_nig.report.build(results, output)`` (looked up when called)."""
    import importlib

    report = importlib.import_module("mechir_nig.report")
    extra = {"allow_incomplete": True} if allow_incomplete else {}
    return Path(report.build(results, output, **extra))


def run(args: argparse.Namespace, s: Session) -> dict[str, Any]:
    results = Path(args.results_dir).expanduser() if args.results_dir is not None else s.out
    if not results.is_dir():
        raise UsageError(f"{results}: no such results folder")
    if not (results / LAYOUT["run"]).is_file():
        raise UsageError(
            f"{results} has no {LAYOUT['run']}: write results there first (e.g. mechir-nig attribute --out {results})"
        )
    output = Path(args.output).expanduser() if args.output is not None else results / LAYOUT["report"]
    attribution = results / LAYOUT["attribution"]
    if attribution.is_file():  # an incomplete one is refused (or said) before the report is built
        try:
            load_attribution(attribution, args.allow_incomplete, s.say)
        except CommandError:
            raise
        except Exception:  # unreadable: the report names it
            pass
    with s.stage("report"):
        path = build(results, output, allow_incomplete=args.allow_incomplete)
    from mechir_nig.cli._common import say_folder_findings

    say_folder_findings(s.say, results)
    s.say(str(path))
    return {"report": str(path)}

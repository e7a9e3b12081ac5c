"""``--help`` and docs/cli.md agree: the options reference of docs/cli.md is the argparse help of every
command, option by option (name, value, default, help text), so a changed option or help text without
its docs (or the reverse) fails here. Regenerate the section with
``python tests/test_cli_help_docs.py --write`` after changing an option."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mechir_nig.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
START, END = (
    "<!-- options:start (generated from --help by tests/test_cli_help_docs.py) -->",
    "<!-- options:end -->",
)


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return ""
    value = ",".join(map(str, action.default)) if isinstance(action.default, list | tuple) else action.default
    return f"`{value}`"


def options_markdown() -> str:
    """One table per command: every option of its ``--help`` (``-h`` left out)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = []
    for command, parser in sub.choices.items():
        out += [
            f"#### `mechir-nig {command}`",
            "",
            "| option | value | default | meaning |",
            "|---|---|---|---|",
        ]
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            names = ", ".join(f"`{o}`" for o in action.option_strings)
            value = "" if action.nargs == 0 else _cell(action.metavar or action.dest.upper())
            help_text = (action.help or "") % {"default": action.default} if action.help else ""
            out.append(f"| {names} | {value} | {_default(action)} | {_cell(help_text)} |")
        out.append("")
    return "\n".join(out)


def _section(text: str) -> str:
    assert START in text and END in text, f"docs/cli.md needs the options section ({START} ... {END})"
    return text[text.index(START) + len(START) : text.index(END)].strip()


def test_every_option_of_every_command_is_documented_with_its_help():
    assert _section(DOC.read_text()) == options_markdown().strip()


def test_faithfulness_help_names_the_neuron_count_and_k_is_the_bm25_depth():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["faithfulness"]
    helps = {o: a.help for a in parser._actions for o in a.option_strings}
    assert "BM25 depth" in helps["--k"]
    assert "neurons per pair" in helps["--neurons"]
    assert "--k neurons" not in (parser.epilog or "") and "--neurons neurons" in parser.epilog


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    text = DOC.read_text()
    DOC.write_text(
        text[: text.index(START) + len(START)] + "\n\n" + options_markdown() + "\n" + text[text.index(END) :]
    )

"""Argument parsing of the az simulator: argparse, as azure-cli's parser (through knack) does.

Unique prefixes of long options are accepted (argparse's allow_abbrev, as in azure-cli), and
every usage error gets azure-cli's text and exit 2. Nothing here knows about VMs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .errors import CLI_REF, QUERY_REF, UsageError
from .query import jmespath_type

OUTPUT_FORMATS = ["json", "jsonc", "yaml", "yamlc", "table", "tsv", "none"]
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class Opt:
    """One option. kind: value | flag | bool (flag with an optional true/false) | list (0..n)."""

    __slots__ = ("choices", "default", "dest", "kind", "names", "required", "type")

    def __init__(self, *names: str, kind: str = "value", choices: list[str] | None = None,
                 type: Callable | None = None, required: bool = False, default=None) -> None:
        self.names = names
        self.dest = names[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.choices = choices
        self.type = type
        self.required = required
        self.default = default if default is not None or kind not in ("flag", "bool") else False

    @property
    def label(self) -> str:
        return "/".join(self.names)


GLOBAL_OPTS = [
    Opt("--output", "-o", choices=OUTPUT_FORMATS, default="json"),
    Opt("--query", type=jmespath_type),
    Opt("--only-show-errors", kind="flag"),
    Opt("--subscription"),
    Opt("--debug", kind="flag"),
    Opt("--verbose", kind="flag"),
]
NARGS = {"value": None, "list": "*", "bool": "?"}


class _Formatter(argparse.HelpFormatter):
    """argparse formats every option it is given; a fixed width spares it importing shutil."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


class _HelpRequested(Exception):
    """-h/--help: the help is printed at once, whatever else argv holds (as argparse does)."""


class _Help(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        raise _HelpRequested


class _AzParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # never returns (typing would cost ~5 ms)
        # azure-cli's parser.error: a message that names --query points to the query docs.
        raise UsageError(message, recommendation=QUERY_REF if "--query" in message else CLI_REF)


def _not_allowed(prog: str, raw: str, opt: Opt, allowed: list[str]) -> UsageError:
    # azure-cli's own _check_value text (enums are case-insensitive there too). Raised from an
    # argparse type, it passes argparse by, which turns only ValueError/TypeError into its own.
    return UsageError(f"{prog}: '{raw}' is not a valid value for '{opt.names[0]}'. "
                      f"Allowed values: {', '.join(allowed)}.")


def _converter(prog: str, opt: Opt) -> Callable | None:
    """The argparse type of an option: enums and true/false words, or the option's own type."""
    if opt.kind == "bool":
        def convert(raw: str) -> bool:
            if raw.lower() in BOOL_WORDS:
                return BOOL_WORDS[raw.lower()]
            raise _not_allowed(prog, raw, opt, ["false", "true"])
        return convert
    if opt.choices is not None:
        def convert(raw: str) -> str:
            for choice in opt.choices:
                if choice.lower() == raw.lower():
                    return choice
            raise _not_allowed(prog, raw, opt, opt.choices)
        return convert
    return opt.type


def _add(parser: argparse.ArgumentParser, prog: str, opt: Opt) -> None:
    if opt.kind == "flag":
        parser.add_argument(*opt.names, dest=opt.dest, action="store_true")
        return
    parser.add_argument(*opt.names, dest=opt.dest, nargs=NARGS[opt.kind],
                        type=_converter(prog, opt), required=opt.required, default=opt.default,
                        **({"const": True} if opt.kind == "bool" else {}))


_PARSERS: dict[tuple[str, tuple[Opt, ...]], argparse.ArgumentParser] = {}


def parser_for(prog: str, opts: list[Opt]) -> argparse.ArgumentParser:
    """The command's parser, built on first use in this process: ~1.3 ms of a `vm
    create`'s ~10 (36 options; the parse itself ~0.2), which the simulator's server spends
    once, before it forks, instead of in every call. A parse changes nothing in it (every
    default is immutable)."""
    key = (prog, tuple(opts))
    parser = _PARSERS.get(key)
    if parser is None:
        parser = _AzParser(prog=prog, add_help=False, allow_abbrev=True,
                           formatter_class=_Formatter)
        parser.add_argument("--help", "-h", action=_Help, nargs=0)
        for opt in [*opts, *GLOBAL_OPTS]:
            _add(parser, prog, opt)
        _PARSERS[key] = parser
    return parser


def parse_args(prog: str, opts: list[Opt], argv: list[str]) -> dict | None:
    """Parse argv as azure-cli's argparse does; None for --help; UsageError with its text."""
    parser = parser_for(prog, opts)
    try:
        return vars(parser.parse_args(argv))
    except _HelpRequested:
        return None

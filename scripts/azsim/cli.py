"""Command-line mechanics of the az simulator, written to match azure-cli 2.91.0 from outside.

An argparse-like parser that prints azure-cli's error texts, a JMESPath subset for
`--query`, and knack's output formats. Nothing here knows about VMs.
"""

from __future__ import annotations

import json
import re

CLI_REF = "\nhttps://aka.ms/cli_ref\nRead more about the command in reference docs\n"
QUERY_REF = (
    "To learn more about --query, please visit: "
    "'https://learn.microsoft.com/cli/azure/query-azure-cli'\n"
)
OUTPUT_FORMATS = ["json", "jsonc", "yaml", "yamlc", "table", "tsv", "none"]
BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class AzError(Exception):
    """A failed command: `text` is the whole stderr, `exit_code` what az returns."""

    def __init__(self, text: str, exit_code: int = 1) -> None:
        super().__init__(text)
        self.text = text if text.endswith("\n") else text + "\n"
        self.exit_code = exit_code


class UsageError(AzError):
    """An argparse error: azure-cli prints it with a recommendation and exits 2."""

    def __init__(self, message: str, *, recommendation: str = CLI_REF) -> None:
        super().__init__(f"ERROR: {message}\n{recommendation}", 2)


def http_error(code: str, message: str, *, exit_code: int = 1) -> AzError:
    """An ARM error as azure-core's HttpResponseError prints it."""
    return AzError(f"ERROR: ({code}) {message}\nCode: {code}\nMessage: {message}\n", exit_code)


# ---------------------------------------------------------------- argument parsing


class Opt:
    """One option. kind: value | flag | bool (flag with an optional true/false) | list (0..n)."""

    __slots__ = ("choices", "default", "dest", "kind", "names", "required", "type")

    def __init__(self, *names: str, kind: str = "value", choices: list[str] | None = None,
                 type: type | None = None, required: bool = False, default=None) -> None:
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
    Opt("--query"),
    Opt("--only-show-errors", kind="flag"),
    Opt("--subscription"),
    Opt("--debug", kind="flag"),
    Opt("--verbose", kind="flag"),
    Opt("--help", "-h", kind="flag"),
]


def _looks_like_option(token: str) -> bool:
    # argparse treats "-1" as a value when no option looks like a negative number.
    return token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-\d+(\.\d+)?", token)


class _Parser:
    def __init__(self, prog: str, opts: list[Opt]) -> None:
        self.prog = prog
        self.opts = opts + GLOBAL_OPTS
        self.longs = {n: o for o in self.opts for n in o.names if n.startswith("--")}
        self.shorts = {n: o for o in self.opts for n in o.names if not n.startswith("--")}

    def resolve(self, token: str) -> tuple[Opt | None, str | None]:
        """Find the option a token names (exact, unique prefix, or short); and an attached value."""
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            attached = value if eq else None
            if name in self.longs:
                return self.longs[name], attached
            matches = sorted(n for n in self.longs if n.startswith(name))
            if len({id(self.longs[n]) for n in matches}) > 1:
                raise UsageError(f"ambiguous option: {name} could match {', '.join(matches)}")
            return (self.longs[matches[0]], attached) if matches else (None, None)
        opt = self.shorts.get(token[:2])
        if opt is None:
            return None, None
        rest = token[2:]
        return opt, (rest[1:] if rest.startswith("=") else rest) or None

    def convert(self, opt: Opt, raw: str):
        if opt.choices is not None:
            for choice in opt.choices:
                if choice.lower() == raw.lower():
                    return choice
            allowed = ", ".join(opt.choices)
            raise UsageError(f"{self.prog}: '{raw}' is not a valid value for '{opt.names[0]}'. "
                             f"Allowed values: {allowed}.")
        if opt.type is not None:
            try:
                return opt.type(raw)
            except ValueError:
                raise UsageError(f"argument {opt.label}: invalid {opt.type.__name__} value: "
                                 f"'{raw}'") from None
        return raw

    def take(self, opt: Opt, attached: str | None, argv: list[str], i: int, values: dict) -> int:
        """Consume the option's values from argv[i:]; return the next index."""
        following = []
        while i + len(following) < len(argv) and not _looks_like_option(argv[i + len(following)]):
            following.append(argv[i + len(following)])
        if opt.kind == "flag":
            if attached is not None:
                raise UsageError(f"argument {opt.label}: ignored explicit argument '{attached}'")
            values[opt.dest] = True
            return i
        if opt.kind == "bool":
            raw = attached if attached is not None else (following[0] if following else None)
            if raw is not None and raw.lower() not in BOOL_WORDS:
                raise UsageError(f"{self.prog}: '{raw}' is not a valid value for "
                                 f"'{opt.names[0]}'. Allowed values: false, true.")
            values[opt.dest] = True if raw is None else BOOL_WORDS[raw.lower()]
            return i + (1 if attached is None and raw is not None else 0)
        if opt.kind == "list":
            raws = [attached] if attached is not None else following
            values[opt.dest] = [self.convert(opt, r) for r in raws]
            return i + (0 if attached is not None else len(following))
        if attached is None and not following:
            raise UsageError(f"argument {opt.label}: expected one argument")
        values[opt.dest] = self.convert(opt, attached if attached is not None else following[0])
        return i + (0 if attached is not None else 1)

    def parse(self, argv: list[str]) -> dict:
        values = {o.dest: o.default for o in self.opts}
        seen: set[str] = set()
        extras: list[str] = []
        i = 0
        while i < len(argv):
            token = argv[i]
            i += 1
            if token == "--":  # argparse: everything after it is positional, hence unrecognized
                extras.extend(argv[i:])
                break
            opt, attached = self.resolve(token) if _looks_like_option(token) else (None, None)
            if opt is None:
                extras.append(token)
                continue
            seen.add(opt.dest)
            i = self.take(opt, attached, argv, i, values)
        if values["help"]:
            return values
        missing = [o.label for o in self.opts if o.required and o.dest not in seen]
        if missing:
            raise UsageError(f"the following arguments are required: {', '.join(missing)}")
        if extras:
            raise UsageError(f"unrecognized arguments: {' '.join(extras)}")
        if values["query"] is not None:
            values["query"] = compile_query(values["query"], label="--query")
        return values


def parse_args(prog: str, opts: list[Opt], argv: list[str]) -> dict:
    """Parse argv like azure-cli's argparse does; raise UsageError with its exact text."""
    return _Parser(prog, opts).parse(argv)


# ---------------------------------------------------------------- JMESPath subset

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>-?\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)|\"(?P<qid>(?:[^\"\\]|\\.)*)\""
    r"|'(?P<raw>(?:[^'\\]|\\.)*)'|`(?P<lit>(?:[^`\\]|\\.)*)`"
    r"|(?P<op>\[\]|\[\?|==|!=|<=|>=|&&|\|\||[.\[\]{}(),:*|<>!@]))"
)
_BP = {"eof": 0, "id": 0, "lit": 0, "num": 0, "]": 0, ")": 0, ",": 0, "}": 0, ":": 0,
       "@": 0, "|": 1, "||": 2, "&&": 3, "==": 5, "!=": 5, "<": 5, "<=": 5, ">": 5,
       ">=": 5, "[]": 9, "*": 20, "[?": 21, ".": 40, "!": 45, "{": 50, "[": 55, "(": 60}
_PROJECTION_STOP = 10


class QueryError(ValueError):
    pass


class OrderedHash(dict):
    """A multiselect-hash result: `-o tsv` keeps its key order (knack's OrderedDict)."""


def _tokenize(text: str) -> list[tuple[str, object]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(text)
        pos = m.end()
        kind = m.lastgroup
        if kind == "op":
            tokens.append((m.group("op"), None))
        elif kind == "num":
            tokens.append(("num", int(m.group("num"))))
        elif kind in ("id", "qid"):
            tokens.append(("id", m.group(kind)))
        elif kind == "raw":
            tokens.append(("lit", m.group("raw").replace("\\'", "'")))
        else:
            try:
                tokens.append(("lit", json.loads(m.group("lit"))))
            except ValueError:
                raise QueryError(text) from None
    tokens.append(("eof", None))
    return tokens


class _QueryParser:
    """A Pratt parser for the JMESPath grammar minus functions, slices and expression refs."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> str:
        return self.tokens[self.i][0]

    def next(self) -> tuple[str, object]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, kind: str) -> object:
        tok_kind, value = self.next()
        if tok_kind != kind:
            raise QueryError(kind)
        return value

    def parse(self) -> tuple:
        node = self.expr(0)
        if self.peek() != "eof":
            raise QueryError("trailing tokens")
        return node

    def expr(self, rbp: int) -> tuple:
        left = self.nud(*self.next())
        while rbp < _BP.get(self.peek(), 0):
            left = self.led(self.next()[0], left)
        return left

    def nud(self, kind: str, value: object) -> tuple:
        if kind == "id":
            return ("field", value)
        if kind == "lit":
            return ("literal", value)
        if kind == "@":
            return ("current",)
        if kind == "*":
            return ("values", ("current",), self.projection_rhs(_BP["*"]))
        if kind == "[]":
            return ("project", ("flatten", ("current",)), self.projection_rhs(_BP["[]"]))
        if kind == "[?":
            return self.led("[?", ("current",))
        if kind == "[":
            return self.bracket(("current",))
        if kind == "{":
            return self.multi_hash()
        if kind == "!":
            return ("not", self.expr(_BP["!"]))
        if kind == "(":
            node = self.expr(0)
            self.expect(")")
            return node
        raise QueryError(kind)

    def led(self, kind: str, left: tuple) -> tuple:
        if kind == ".":
            return ("sub", left, self.dot_rhs(_BP["."]))
        if kind == "[":
            return self.bracket(left)
        if kind == "[]":
            return ("project", ("flatten", left), self.projection_rhs(_BP["[]"]))
        if kind == "[?":
            cond = self.expr(0)
            self.expect("]")
            return ("filter", left, cond, self.projection_rhs(_BP["[?"]))
        if kind == "|":
            return ("pipe", left, self.expr(_BP["|"]))
        if kind in ("||", "&&"):
            return ("or" if kind == "||" else "and", left, self.expr(_BP[kind]))
        if kind in ("==", "!=", "<", "<=", ">", ">="):
            return ("cmp", kind, left, self.expr(_BP[kind]))
        raise QueryError(kind)

    def bracket(self, left: tuple) -> tuple:
        if self.peek() == "num":
            index = self.next()[1]
            self.expect("]")
            return ("sub", left, ("index", index)) if left != ("current",) else ("index", index)
        if self.peek() == "*":
            self.next()
            self.expect("]")
            return ("project", left, self.projection_rhs(_BP["*"]))
        if left != ("current",):
            raise QueryError("[")
        return self.multi_list()

    def projection_rhs(self, bp: int) -> tuple:
        kind = self.peek()
        if _BP.get(kind, 0) < _PROJECTION_STOP:
            return ("current",)
        if kind in ("[", "[?", "[]"):
            return self.expr(bp)
        if kind == ".":
            self.next()
            return self.dot_rhs(bp)
        raise QueryError(kind)

    def dot_rhs(self, bp: int) -> tuple:
        kind = self.peek()
        if kind in ("id", "*"):
            return self.expr(bp)
        if kind == "[":
            self.next()
            return self.multi_list()
        if kind == "{":
            self.next()
            return self.multi_hash()
        raise QueryError(kind)

    def multi_list(self) -> tuple:
        items = [self.expr(0)]
        while self.peek() == ",":
            self.next()
            items.append(self.expr(0))
        self.expect("]")
        return ("list", items)

    def multi_hash(self) -> tuple:
        pairs = []
        while True:
            key = self.expect("id")
            self.expect(":")
            pairs.append((key, self.expr(0)))
            if self.peek() != ",":
                break
            self.next()
        self.expect("}")
        return ("hash", pairs)


def compile_query(text: str, *, label: str = "--query") -> tuple:
    """Compile a JMESPath expression or raise azure-cli's argparse error for it."""
    try:
        return _QueryParser(text).parse()
    except (QueryError, IndexError):
        raise UsageError(f"argument {label}: invalid jmespath_type value: '{text}'",
                         recommendation=QUERY_REF) from None


def truthy(value) -> bool:
    return value not in (None, False, "", [], {})


def search(node: tuple, data):
    """Evaluate a compiled query with JMESPath semantics (projections drop nulls)."""
    kind = node[0]
    if kind == "field":
        return data.get(node[1]) if isinstance(data, dict) else None
    if kind == "current":
        return data
    if kind == "literal":
        return node[1]
    if kind in ("sub", "pipe"):
        return search(node[2], search(node[1], data))
    if kind == "index":
        ok = isinstance(data, list) and -len(data) <= node[1] < len(data)
        return data[node[1]] if ok else None
    if kind == "flatten":
        base = search(node[1], data)
        if not isinstance(base, list):
            return None
        return [x for item in base for x in (item if isinstance(item, list) else [item])]
    if kind in ("project", "values", "filter"):
        return _project(node, data)
    if kind == "cmp":
        return _compare(node[1], search(node[2], data), search(node[3], data))
    if kind == "or":
        left = search(node[1], data)
        return left if truthy(left) else search(node[2], data)
    if kind == "and":
        left = search(node[1], data)
        return search(node[2], data) if truthy(left) else left
    if kind == "not":
        return not truthy(search(node[1], data))
    if data is None:
        return None
    if kind == "list":
        return [search(item, data) for item in node[1]]
    return OrderedHash((key, search(value, data)) for key, value in node[1])


def _project(node: tuple, data):
    base = search(node[1], data)
    if node[0] == "values":
        base = list(base.values()) if isinstance(base, dict) else None
    if not isinstance(base, list):
        return None
    if node[0] == "filter":
        base = [item for item in base if truthy(search(node[2], item))]
    rhs = node[3] if node[0] == "filter" else node[2]
    results = (search(rhs, item) for item in base)
    return [r for r in results if r is not None]


def _compare(op: str, left, right):
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
    if not numbers:
        return None
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


# ---------------------------------------------------------------- output


def add_resource_group(obj) -> None:
    """azure-cli adds `resourceGroup` (parsed from `id`) to every dict that has an id."""
    if isinstance(obj, list):
        for item in obj:
            add_resource_group(item)
    elif isinstance(obj, dict):
        if "resourcegroup" not in (k.lower() for k in obj) and isinstance(obj.get("id"), str):
            parts = obj["id"].split("/")
            lowered = [p.lower() for p in parts]
            if "resourcegroups" in lowered and lowered.index("resourcegroups") + 1 < len(parts):
                obj["resourceGroup"] = parts[lowered.index("resourcegroups") + 1]
        for value in obj.values():
            add_resource_group(value)


def format_output(result, output: str) -> str:
    """Render a command result like knack's OutputProducer."""
    if result is None or output == "none":
        return ""
    if output in ("json", "jsonc"):
        return json.dumps(result, ensure_ascii=False, indent=2, sort_keys=True,
                          separators=(",", ": ")) + "\n"
    if output in ("yaml", "yamlc"):
        import yaml  # only this output needs it

        plain = json.loads(json.dumps(result))
        return yaml.safe_dump(plain, default_flow_style=False, allow_unicode=True)
    if output == "tsv":
        rows = result if isinstance(result, list) else [result]
        return "".join(_tsv_row(row) + "\n" for row in rows)
    return _table(result)


def _tsv_cell(value) -> str:
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, dict):
        return ""
    return value if isinstance(value, str) else str(value)


def _tsv_row(row) -> str:
    if isinstance(row, OrderedHash):
        return "\t".join(_tsv_cell(v) for v in row.values())
    if isinstance(row, dict):
        return "\t".join(_tsv_cell(v) for _, v in sorted(row.items()))
    if isinstance(row, list):
        return "\t".join(_tsv_cell(v) for v in row)
    if isinstance(row, bool):
        return str(row).lower()
    return _tsv_cell(row)


def _table(result) -> str:
    """knack's auto table (tabulate 'simple'): scalar columns only, id/type/etag skipped."""
    items = result if isinstance(result, list) else [result]
    rows = []
    for item in items:
        if not isinstance(item, dict):
            rows.append({"Result": item})
            continue
        keys = item.keys() if isinstance(item, OrderedHash) else sorted(item)
        rows.append({k[:1].upper() + k[1:]: item[k] for k in keys
                     if k not in ("id", "type", "etag") and item[k] is not None
                     and not isinstance(item[k], list | dict)})
    headers = list(dict.fromkeys(h for row in rows for h in row))
    if not headers:
        return ""
    cells = [[str(row.get(h, "")) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[c]) for r in cells)) for c, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines) + "\n"

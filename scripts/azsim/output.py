"""Output of the az simulator: azure-cli's `resourceGroup` addition and knack's formats."""

from __future__ import annotations

import json
import re
from json.encoder import INFINITY, encode_basestring
from typing import Any, NamedTuple

from .query import OrderedHash

_RESOURCE_GROUP = re.compile(r"(?:^|/)resourcegroups/([^/]*)", re.IGNORECASE)


class WithResourceGroups(NamedTuple):
    """A handler's result whose every mapping with an id has its resourceGroup already, as
    `add_resource_group` would add it: the walk is skipped (at 500 VMs a listing has ~10,000
    containers, and the walk was ~15 ms of its ~55)."""

    value: Any


def resource_group_of(ident: str) -> str | None:
    """The resource group azure-cli parses from an id."""
    found = _RESOURCE_GROUP.search(ident)
    return found.group(1) if found else None


def add_resource_group(obj) -> None:
    """azure-cli adds `resourceGroup` (parsed from `id`) to every dict that has an id.

    Iterative, with exact type checks (the results are plain dicts and lists): a listing of
    500 VMs has ~10,000 containers, and the recursive walk took 45 ms of its ~80."""
    stack = [obj] if type(obj) is dict or type(obj) is list else []
    while stack:
        node = stack.pop()
        if type(node) is dict:
            ident = node.get("id")
            if type(ident) is str and "resourcegroup" not in map(str.lower, node) and (
                    found := resource_group_of(ident)) is not None:
                node["resourceGroup"] = found
            node = node.values()
        for value in node:
            if type(value) is dict or type(value) is list:
                stack.append(value)


def _scalar(value) -> str:
    """A leaf as json writes it; TypeError for what json.dumps must handle (or reject)."""
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if not isinstance(value, float):
        raise TypeError(type(value).__name__)
    if value != value or value in (INFINITY, -INFINITY):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _block(brackets: str, body: list[str], pad: str) -> str:
    if not body:
        return brackets
    inner = pad + "  "
    return f"{brackets[0]}\n{inner}" + (",\n" + inner).join(body) + f"\n{pad}{brackets[1]}"


def _indented(value, pad: str) -> str:
    """json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, separators=(",", ": "))
    for str keys; a string per container joined in C, no generator per value (json's is)."""
    if isinstance(value, str):
        return encode_basestring(value)
    inner = pad + "  "
    if isinstance(value, dict):  # encode_basestring raises TypeError for a non-str key
        return _block("{}", [f"{encode_basestring(k)}: {_indented(v, inner)}"
                             for k, v in sorted(value.items())], pad)
    if isinstance(value, list | tuple):
        return _block("[]", [_indented(v, inner) for v in value], pad)
    return _scalar(value)


def indented_json(result) -> str:
    """The -o json text, as knack writes it: json's indenting encoder is pure Python and 1.6x
    as slow as _indented, which hands what it does not write to json.dumps."""
    try:
        return _indented(result, "")
    except TypeError:
        return json.dumps(result, ensure_ascii=False, indent=2, sort_keys=True,
                          separators=(",", ": "))


def format_output(result, output: str) -> str:
    """Render a command result like knack's OutputProducer."""
    if result is None or output == "none":
        return ""
    if output in ("json", "jsonc"):
        return indented_json(result) + "\n"
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

"""Output of the az simulator: azure-cli's `resourceGroup` addition and knack's formats."""

from __future__ import annotations

import json

from .query import OrderedHash


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

"""Plan sources of this tool's own: a plan file (YAML) and `--vm NAME[:ZONE[:SIZE]]` options.

A plan file has `deployment_id`, `resource_group`, optional `location`, `deadline` (seconds)
and `ssh_private_key`, `defaults:` (any VM spec field) and `vms:` (entries with `name` and
per-VM fields, or just a name); see docs/example-plan.yaml. Relative paths in it are
relative to the file's directory, as in a VM spec file (`read_spec_file`, read here too).
Every problem of its shape is collected, not raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vmlaunch.plans.plan import DEFAULT_DEADLINE, PER_PLAN_FIELDS, PLAN_KEYS, PlanDraft
from vmlaunch.schema.vmspec import SPEC_FIELDS

_PATH_FIELDS = ("custom_data", "ssh_public_key")


def read_yaml(path: Path, what: str) -> tuple[Any, list[str]]:
    """The parsed file, or None and a problem naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")), []
    except OSError as exc:
        return None, [f"{what} {str(path)!r} cannot be read ({exc.strerror})"]
    except yaml.YAMLError as exc:
        return None, [f"{what} {str(path)!r} is not valid YAML ({exc})"]


def _relative_to(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its file paths (custom_data, ssh_public_key) made relative to `base`."""
    out = dict(data)
    for name in _PATH_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = str(base / Path(out[name]).expanduser())
    return out


def read_spec_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """A VM spec file (`vm_launcher.py launch --spec`): a YAML mapping of VMSpec fields,
    its file paths relative to its directory as in a plan file; the problems otherwise."""
    data, problems = read_yaml(path, "spec file")
    if problems or data is None:
        return {}, problems
    if not isinstance(data, dict):
        return {}, [f"spec file {str(path)!r} must hold a mapping of VM spec fields"]
    return _relative_to(path.parent, data), []


def draft_from_file(path: Path) -> PlanDraft:
    """A draft from a plan file, with every problem of its shape collected."""
    data, problems = read_yaml(path, "plan file")
    empty = PlanDraft(deployment_id="", resource_group="", origin=f"plan {path}",
                      problems=problems)
    if problems:
        return empty
    if not isinstance(data, dict):
        problems.append(f"plan file {str(path)!r} must be a mapping with the keys "
                        f"{', '.join(PLAN_KEYS)}")
        return empty
    problems += [f"{key}: unknown top-level key (expected one of {', '.join(PLAN_KEYS)})"
                 for key in data if key not in PLAN_KEYS]
    deployment_id = _text(data, "deployment_id", problems)
    resource_group = _text(data, "resource_group", problems)
    location = _text(data, "location", problems) or None
    deadline = _seconds(data, "deadline", problems, DEFAULT_DEADLINE)
    key = _text(data, "ssh_private_key", problems)
    defaults = _relative_to(path.parent, _defaults(data.get("defaults"), problems))
    entries = [_relative_to(path.parent, e) for e in _entries(data.get("vms"), problems)]
    return PlanDraft(deployment_id=deployment_id, resource_group=resource_group,
                     location=location, deadline=deadline, origin=f"plan {path}",
                     ssh_private_key=str(path.parent / Path(key).expanduser()) if key else None,
                     defaults=defaults, entries=entries, problems=problems)


def _text(data: dict[str, Any], key: str, problems: list[str]) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str | int) or isinstance(value, bool):
        problems.append(f"{key}: expected a string, got {type(value).__name__}")
        return ""
    return str(value)


def _seconds(data: dict[str, Any], key: str, problems: list[str], default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{key}: expected a number of seconds, got {value!r}")
        return default
    return float(value)


def _defaults(value: Any, problems: list[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append("defaults: expected a mapping of VM spec fields")
        return {}
    for key in value:
        if key in PER_PLAN_FIELDS:
            problems.append(f"defaults.{key}: set {key} "
                            f"{'per VM' if key == 'name' else 'at the top level'}")
        elif key not in SPEC_FIELDS:
            problems.append(f"defaults.{key}: unknown field")
    return {k: v for k, v in value.items() if k in SPEC_FIELDS and k not in PER_PLAN_FIELDS}


def _entries(value: Any, problems: list[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append("vms: expected a list of entries with a name")
        return []
    entries = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"vms[{index}]: expected a mapping with a name")
            continue
        if "resource_group" in entry:
            problems.append(f"vms[{index}] ({entry['name']}).resource_group: every VM of a plan "
                            "is in the plan's resource_group")
            entry = {k: v for k, v in entry.items() if k != "resource_group"}
        entries.append(entry)
    return entries


# --- --vm options -----------------------------------------------------------------------------

def draft_from_vm_options(vms: list[str], *, resource_group: str | None,
                          deployment_id: str | None) -> PlanDraft:
    """`--vm NAME[:ZONE[:SIZE]]`; an empty part (`web::Standard_B2s`) means unset."""
    problems: list[str] = []
    entries = []
    for option in vms:
        parts = option.split(":")
        if len(parts) > 3 or not parts[0]:
            problems.append(f"--vm {option!r}: expected NAME[:ZONE[:SIZE]]")
            continue
        entry: dict[str, Any] = {"name": parts[0]}
        if len(parts) > 1 and parts[1]:
            entry["zone"] = parts[1]
        if len(parts) > 2 and parts[2]:
            entry["size"] = parts[2]
        entries.append(entry)
    return PlanDraft(deployment_id=deployment_id or resource_group or "",
                     resource_group=resource_group or "", entries=entries,
                     origin="--vm options", problems=problems)

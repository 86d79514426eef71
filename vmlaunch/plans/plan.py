"""The deployment plan: which VMs, with which specs, under which deployment id.

A plan comes from exactly one source:

* `--plan FILE`: YAML with `deployment_id`, `resource_group`, optional `location` and
  `deadline` (seconds), `defaults:` (any VM spec field) and `vms:` (entries with `name` and
  per-VM fields). See docs/example-plan.yaml. Relative file paths in it (`custom_data`,
  `ssh_public_key`, `ssh_private_key`) are relative to the plan file's directory.
* `--vm NAME[:ZONE[:SIZE]]` (repeated) with `--resource-group`.
* `--k0rdent-config FILE` or `--from-env`: what the bash scripts have (see `legacyplan`).
* none of these: the bash loader's search, `./config/k0rdent.yaml` then
  `./config/k0rdent-default.yaml`.

Precedence of VM fields: a value set for one VM (a `vms:` entry, `--vm NAME:ZONE:SIZE`, a
k0rdent host's zone, size and cloud-init file) wins over a command-line field option, which
wins over the plan's `defaults:`. A YAML integer zone (`zone: 1`) is read as "1".

Every problem of a plan is collected and raised at once as one `PlanError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vmlaunch.errors import ExitCode, PlansError
from vmlaunch.schema import speccheck, typedfields
from vmlaunch.schema.vmspec import VMSpec, spec_problems

DEFAULT_DEADLINE = 1800.0
PLAN_KEYS = ("deployment_id", "resource_group", "location", "deadline", "ssh_private_key",
             "defaults", "vms")
PER_PLAN_FIELDS = frozenset({"name", "resource_group"})


class PlanError(PlansError, ValueError, exit_code=ExitCode.BAD_INPUT):
    """A plan that cannot be used; `problems` lists every reason, one sentence each."""

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        where = f" ({source})" if source else ""
        count = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Invalid plan{where}: {count} problem{'s' * (count != 1)}:\n{lines}")


@dataclass(frozen=True, kw_only=True)
class PlanFields:
    """What a plan says besides its VMs, the same before and after validation."""

    deployment_id: str
    resource_group: str
    location: str | None = None
    deadline: float = DEFAULT_DEADLINE
    origin: str = ""
    # From a k0rdent config or the environment; the command line wins over both.
    poll_interval: float | None = None
    ssh_private_key: str | None = None

    def plan_fields(self) -> dict[str, Any]:
        """The fields in this order (that of `plan --json`)."""
        return {f.name: getattr(self, f.name) for f in fields(PlanFields)}


@dataclass(frozen=True, kw_only=True)
class Plan(PlanFields):
    """A validated plan. VM specs hold file paths (custom_data, ssh_public_key)."""

    vms: list[VMSpec]

    def spec(self, name: str) -> VMSpec:
        return next(vm for vm in self.vms if vm.name == name)

    @property
    def names(self) -> list[str]:
        return [vm.name for vm in self.vms]

    def with_location(self, location: str) -> Plan:
        """Every VM without a location gets `location` (the resource group's)."""
        vms = [vm if vm.location else vm.replace(location=location) for vm in self.vms]
        return replace(self, vms=vms, location=self.location or location)

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan_fields(), "vms": [vm.to_dict() for vm in self.vms]}


@dataclass(frozen=True, kw_only=True)
class PlanDraft(PlanFields):
    """A plan before validation: what a source found, plus the problems it met."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def build(self, overrides: dict[str, Any] | None = None) -> Plan:
        """Merge defaults, command-line `overrides` and entries; validate everything."""
        problems = list(self.problems)
        problems += [f"command line: {name} cannot be a default for every VM"
                     for name in sorted(PER_PLAN_FIELDS & set(overrides or {}))]
        specs = []
        for index, entry in enumerate(self.entries):
            data = {**self.defaults, **(overrides or {}), **entry,
                    "resource_group": self.resource_group}
            if self.location and data.get("location") is None:
                data["location"] = self.location
            label = f"vms[{index}]" + (f" ({entry['name']})" if "name" in entry else "")
            spec, spec_problems_found = _build_spec(_normalise(data), label)
            problems += spec_problems_found
            if spec is not None:
                specs.append(spec)
        plan = Plan(**self.plan_fields(), vms=specs)
        found = validate(plan, entries=len(self.entries))
        if any(p.startswith("no cluster id") for p in problems):  # said already
            found = [p for p in found if p != "deployment_id is required"]
        problems += found
        if problems:
            raise PlanError(_unique(problems), source=self.origin)
        return plan


def _build_spec(data: dict[str, Any], label: str) -> tuple[VMSpec | None, list[str]]:
    """The spec and the problems of its fields. Fields of the wrong type are reported and
    then left at their defaults, so the checks of the whole spec still run."""
    data = {"image": "", **data}  # a missing image is reported by spec_problems
    try:
        return VMSpec.from_dict(data, where=label), []
    except typedfields.FieldErrors as exc:
        problems = exc.problems
    bad = {p[len(label) + 1:].split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
           for p in problems if p.startswith(f"{label}.")}
    try:
        spec = VMSpec.from_dict({k: v for k, v in data.items() if k not in bad}, where=label)
    except typedfields.FieldErrors:
        spec = None
    return spec, problems


def validate(plan: Plan, *, entries: int | None = None) -> list[str]:
    """Every problem of a whole plan: its own fields, duplicates, and each VM's spec."""
    problems = []
    if not plan.deployment_id:
        problems.append("deployment_id is required")
    elif (why := speccheck.deployment_id_problem(plan.deployment_id)) is not None:
        problems.append(why)
    if not plan.resource_group:
        problems.append("resource_group is required (with --vm: --resource-group)")
    if plan.deadline <= 0:
        problems.append("deadline must be a positive number of seconds")
    if plan.poll_interval is not None and plan.poll_interval <= 0:
        problems.append("poll_interval must be a positive number of seconds")
    if (entries if entries is not None else len(plan.vms)) == 0:
        problems.append("the plan has no VMs")
    for name, count in Counter(plan.names).items():
        if count > 1:
            problems.append(f"VM {name!r} is listed {count} times; names must be unique")
    found = [p for spec in plan.vms for p in spec_problems(spec, files_are_paths=True)]
    # Every VM shares the plan's resource group: report a bad one once, not per VM.
    group = [p for p in found if ": resource_group " in p]
    if group and plan.resource_group:
        problems.append(group[0].split(": ", 1)[1])
    return problems + [p for p in found if ": resource_group " not in p]


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    """YAML reads `zone: 1` as an integer; a zone is a string everywhere else."""
    out = dict(data)
    if isinstance(out.get("zone"), int) and not isinstance(out["zone"], bool):
        out["zone"] = str(out["zone"])
    if isinstance(out.get("fallback_zones"), list):
        out["fallback_zones"] = [str(z) if isinstance(z, int) and not isinstance(z, bool)
                                 else z for z in out["fallback_zones"]]
    return out


def _unique(problems: list[str]) -> list[str]:
    return list(dict.fromkeys(problems))

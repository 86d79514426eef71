"""Where a plan comes from: exactly one of `--plan FILE`, `--vm` options, a k0rdent config
or the bash scripts' variables (`--from-env`); the sources build on `plan`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vmlaunch.plans import frombash, planfile
from vmlaunch.plans.plan import Plan, PlanDraft, PlanError


@dataclass(frozen=True)
class PlanSource:
    """The plan options of the command line; at most one source may be given."""

    plan_file: Path | None = None
    vms: tuple[str, ...] = ()
    resource_group: str | None = None
    k0rdent_config: Path | None = None
    from_env: bool = False
    cluster_id: str | None = None
    deployment_id: str | None = None

    def draft(self, *, env: dict[str, str] | None, cwd: Path) -> PlanDraft:
        given = [name for name, on in (("--plan", self.plan_file), ("--vm", self.vms),
                                       ("--k0rdent-config", self.k0rdent_config),
                                       ("--from-env", self.from_env)) if on]
        if len(given) > 1:
            raise PlanError([f"give only one plan source, not {' and '.join(given)}"])
        problems = []
        if self.resource_group and not self.vms:
            problems.append("--resource-group is used only with --vm")
        if self.cluster_id and (self.plan_file or self.vms or self.from_env):
            problems.append("--cluster-id is used only with a k0rdent config")
        if self.plan_file:
            draft = planfile.draft_from_file(self.plan_file)
        elif self.vms:
            draft = planfile.draft_from_vm_options(
                list(self.vms), resource_group=self.resource_group,
                deployment_id=self.deployment_id)
        elif self.from_env:
            draft = frombash.draft_from_env(env, cwd=cwd)
        else:
            config = self.k0rdent_config or frombash.find_k0rdent_config(cwd)
            draft = frombash.draft_from_k0rdent(config, cluster_id=self.cluster_id, cwd=cwd)
        draft.problems[:0] = problems
        return replace(draft, deployment_id=self.deployment_id) if self.deployment_id else draft


def load_plan(source: PlanSource, *, overrides: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Plan:
    """The validated plan; PlanError listing every problem otherwise."""
    return source.draft(env=env, cwd=cwd or Path.cwd()).build(overrides)

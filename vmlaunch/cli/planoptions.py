"""The orchestrator's plan options (deploy, plan, reset): where the plan comes from (at
most one source), the VM field defaults, and the validated plan they make."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from vmlaunch.cli.options import apply_options
from vmlaunch.cli.specoptions import spec_options, spec_values
from vmlaunch.plans.plan import Plan
from vmlaunch.plans.sources import PlanSource, load_plan

F = TypeVar("F", bound=Callable[..., Any])
POSITIVE = click.FloatRange(min=0, min_open=True)


def plan_options(command: F) -> F:
    """Where the plan comes from (at most one source) and the VM field defaults."""
    return apply_options(command, [
        click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Plan file (YAML; see docs/example-plan.yaml)."),
        click.option("--vm", "vm_options", multiple=True, metavar="NAME[:ZONE[:SIZE]]",
                     help="A VM to launch (repeatable); needs --resource-group."),
        click.option("--k0rdent-config", type=click.Path(dir_okay=False, path_type=Path),
                     help="Derive the plan from a k0rdent config as the bash scripts do."),
        click.option("--from-env", is_flag=True,
                     help="Take the plan from the variables a bash caller exported "
                          "(RG, VM_HOSTS, VM_ZONE_<HOST>, ...; see docs/orchestrator.md)."),
        click.option("--cluster-id", help="k0rdent cluster id. [default: ./.clusterid]"),
        click.option("--deployment-id",
                     help="Deployment id (tags, events). [default: the plan's; with --vm "
                          "the resource group]"),
        click.option("--deadline", type=POSITIVE,
                     help="Seconds until unfinished VMs are cancelled and marked Failed. "
                          "[default: the plan's, else 1800]"),
        spec_options(exclude=("name",)),
    ])


def plan_from(params: Mapping[str, Any]) -> Plan:
    """The validated plan; PlanError (exit 2) listing every problem otherwise."""
    overrides = spec_values(params)
    source = PlanSource(
        plan_file=params["plan_file"], vms=tuple(params["vm_options"]),
        resource_group=overrides.pop("resource_group", None),
        k0rdent_config=params["k0rdent_config"], from_env=params["from_env"],
        cluster_id=params["cluster_id"], deployment_id=params["deployment_id"])
    plan = load_plan(source, overrides=overrides, env=None)
    if params["deadline"]:
        plan = dataclasses.replace(plan, deadline=params["deadline"])
    return plan

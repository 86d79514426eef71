"""The deployment plan: which VMs, with which specs, under which deployment id.

Loaded from a plan file, `--vm` options, a k0rdent config, or a bash caller's
environment; validated as a whole before anything is launched.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmspec import VMSpec

DEFAULT_DEADLINE = 1800.0


@dataclass(frozen=True)
class Plan:
    """A validated plan. VM specs hold file paths (custom_data, ssh_public_key)."""

    deployment_id: str
    resource_group: str
    vms: list[VMSpec]
    deadline: float = DEFAULT_DEADLINE
    origin: str = ""

    def spec(self, name: str) -> VMSpec:
        return next(vm for vm in self.vms if vm.name == name)

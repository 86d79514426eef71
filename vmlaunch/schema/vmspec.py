"""The VM spec: one vocabulary for plans, requests, the manual launch and the az layer.

Field names are the snake_case of the `az vm create` flags, plus the launch policy.
`custom_data` and `ssh_public_key` are file paths in a plan or on the command line; a
request carries their *content* (see `with_file_contents`), so a worker on another
machine needs no shared disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from vmlaunch.schema import speccheck, typedfields

ZONES = ("1", "2", "3")
PRIORITIES = ("Regular", "Low", "Spot")
EVICTION_POLICIES = ("Deallocate", "Delete")
PUBLIC_IP_SKUS = ("Basic", "Standard")
CLOUD_INIT_CHECKS = ("run-command", "ssh")
# Azure refuses custom data above 64 KiB once decoded.
CUSTOM_DATA_MAX_BYTES = 65535


@dataclass(frozen=True)
class VMSpec:
    """Everything needed to create and verify one VM."""

    name: str
    resource_group: str
    image: str
    location: str | None = None
    size: str = "Standard_D2s_v5"
    zone: str | None = None
    priority: str = "Regular"
    eviction_policy: str | None = None
    admin_username: str = "azureuser"
    ssh_key_name: str | None = None
    ssh_public_key: str | None = None
    vnet_name: str | None = None
    subnet: str | None = None
    nsg: str | None = None
    public_ip_sku: str = "Standard"
    custom_data: str | None = None
    os_disk_size_gb: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    fallback_zones: list[str] = field(default_factory=list)
    fallback_sizes: list[str] = field(default_factory=list)
    # Launch policy.
    max_attempts: int = 3
    create_timeout: float = 600.0
    retry_backoff: float = 5.0
    verify_ssh: bool = True
    verify_cloud_init: bool = True
    cloud_init_check: str = "run-command"
    cloud_init_timeout: float = 900.0
    ssh_user: str | None = None
    ssh_port: int = 22
    ssh_connect_timeout: float = 30.0

    @property
    def effective_ssh_user(self) -> str:
        return self.ssh_user or self.admin_username

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "spec") -> VMSpec:
        """Build a spec, raising `typedfields.FieldErrors` listing every problem."""
        return typedfields.from_dict(cls, data, where=where)

    def replace(self, **changes: Any) -> VMSpec:
        return dataclasses.replace(self, **changes)

    def with_file_contents(self) -> VMSpec:
        """Replace the custom-data and public-key paths by the files' contents."""
        changes: dict[str, Any] = {}
        if self.custom_data is not None:
            changes["custom_data"] = Path(self.custom_data).expanduser().read_text()
        if self.ssh_public_key is not None:
            changes["ssh_public_key"] = Path(self.ssh_public_key).expanduser().read_text().strip()
        return self.replace(**changes)


SPEC_FIELDS: dict[str, Any] = get_type_hints(VMSpec)


def spec_problems(spec: VMSpec, *, files_are_paths: bool,
                  allowed_extra_args: Collection[str] | None = None) -> list[str]:
    """Every problem with a spec, as sentences naming the VM and the field.

    `files_are_paths` is true for plans and the command line (custom_data and
    ssh_public_key name files that must be readable), false for requests (they carry
    the contents). `allowed_extra_args`: the only flags extra_args may use (a worker's
    allow-list); None allows any flag the tool does not set itself.
    """
    p = f"VM {spec.name!r}"
    problems = speccheck.value_problems(spec, p)
    problems += speccheck.extra_arg_problems(spec.extra_args, allowed_extra_args, p)
    if not spec.image:
        problems.append(f"{p}: image is required")
    for zone in [spec.zone, *spec.fallback_zones]:
        if zone is not None and zone not in ZONES:
            problems.append(f"{p}: zone {zone!r} must be one of {', '.join(ZONES)}")
    problems += _choice_problems(spec, p)
    problems += _policy_problems(spec, p)
    problems += _file_problems(spec, p) if files_are_paths else _content_problems(spec, p)
    return problems


def _choice_problems(spec: VMSpec, p: str) -> list[str]:
    problems = []
    choices = {
        "priority": PRIORITIES,
        "public_ip_sku": PUBLIC_IP_SKUS,
        "cloud_init_check": CLOUD_INIT_CHECKS,
    }
    for name, allowed in choices.items():
        if getattr(spec, name) not in allowed:
            problems.append(f"{p}: {name} must be one of {', '.join(allowed)}")
    if spec.eviction_policy is not None:
        if spec.eviction_policy not in EVICTION_POLICIES:
            problems.append(f"{p}: eviction_policy must be one of {', '.join(EVICTION_POLICIES)}")
        if spec.priority == "Regular":
            problems.append(f"{p}: eviction_policy is only allowed with priority Spot or Low")
    if spec.ssh_key_name and spec.ssh_public_key:
        problems.append(f"{p}: give ssh_key_name or ssh_public_key, not both")
    return problems


def _policy_problems(spec: VMSpec, p: str) -> list[str]:
    problems = []
    if spec.max_attempts < 1:
        problems.append(f"{p}: max_attempts must be at least 1")
    if spec.retry_backoff < 0:
        problems.append(f"{p}: retry_backoff must not be negative")
    for name in ("create_timeout", "cloud_init_timeout", "ssh_connect_timeout"):
        if getattr(spec, name) <= 0:
            problems.append(f"{p}: {name} must be a positive number of seconds")
    if not 1 <= spec.ssh_port <= 65535:
        problems.append(f"{p}: ssh_port must be between 1 and 65535")
    if spec.os_disk_size_gb is not None and not 1 <= spec.os_disk_size_gb <= 4095:
        problems.append(f"{p}: os_disk_size_gb must be between 1 and 4095")
    return problems


def _file_problems(spec: VMSpec, p: str) -> list[str]:
    problems = []
    for name in ("custom_data", "ssh_public_key"):
        path = getattr(spec, name)
        if path is None:
            continue
        file = Path(path).expanduser()
        try:
            data = file.read_bytes()
        except OSError as exc:
            problems.append(f"{p}: {name} file {path!r} cannot be read ({exc.strerror})")
            continue
        if name == "custom_data" and len(data) > CUSTOM_DATA_MAX_BYTES:
            problems.append(
                f"{p}: custom_data file {path!r} is {len(data)} bytes; "
                f"Azure accepts at most {CUSTOM_DATA_MAX_BYTES}"
            )
        if name == "ssh_public_key":
            # with_file_contents strips the content: the key goes as one argument.
            why = speccheck.public_key_problem(data.decode(errors="replace").strip())
            if why is not None:
                problems.append(f"{p}: ssh_public_key file {path!r} {why}")
    return problems


def _content_problems(spec: VMSpec, p: str) -> list[str]:
    problems = []
    if spec.custom_data is not None and len(spec.custom_data.encode()) > CUSTOM_DATA_MAX_BYTES:
        problems.append(f"{p}: custom_data is larger than Azure's {CUSTOM_DATA_MAX_BYTES} bytes")
    key = spec.ssh_public_key
    if key is not None and (why := speccheck.public_key_problem(key)):
        problems.append(f"{p}: ssh_public_key {why}")
    return problems


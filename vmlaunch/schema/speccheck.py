"""Format checks of every spec value that reaches an argv (az or ssh), and of extra args.

A request comes from anyone who can publish on the bus, so nothing in it may become an
option of a command we run: no value starts with '-' or holds a control character, each
field matches what Azure (or POSIX, for users) accepts, and `extra_args` may name only
long flags the tool does not set itself (and, in a worker, only flags it was told to
allow). Every pattern is matched whole (`fullmatch`): `$` would accept a trailing newline.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import fields
from typing import Any

# Azure's rules for a Linux VM name, which is also its host name: letters, digits, '-'
# and '.', starting and ending with a letter or digit, at most 64, not only digits.
_VM_NAME = re.compile(r"(?![0-9]+\Z)[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62}[A-Za-z0-9])?")
# Resource group: 1-90 of letters, digits, '_', '-', '.', '(' and ')', not ending in '.'.
_RESOURCE_GROUP = re.compile(r"[\w().-]{0,89}[\w()-]")
_LOCATION = re.compile(r"[A-Za-z0-9]{1,40}")
_SIZE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")
_URN_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# An alias (Ubuntu2204), a URN (publisher:offer:sku:version) or a resource id.
_RESOURCE_ID = r"(?:/[\w().-]+){2,30}"
_IMAGE = re.compile(rf"[A-Za-z][A-Za-z0-9._-]{{0,79}}|{_URN_PART}(?::{_URN_PART}){{3}}|"
                    rf"{_RESOURCE_ID}")
# Network and key resources: 1-80 letters, digits, '_', '.', '-'; first a letter, digit
# or '_', last a letter, digit or '_'. Subnets, NSGs and keys may also be given by id.
_RESOURCE_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_])?"
_NAME = re.compile(_RESOURCE_NAME)
_NAME_OR_ID = re.compile(f"{_RESOURCE_NAME}|{_RESOURCE_ID}")
# POSIX portable user names, as useradd takes them.
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Azure tag names may not hold <>%&\?/; '=' would split the `--tags key=value` argument.
_TAG_KEY = re.compile(r"[^<>%&\\?/=]{1,512}")
_TAG_VALUE = re.compile(r".{0,256}", re.S)
_PUBLIC_KEY = re.compile(r"(?:ssh-[a-z0-9-]+|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+) "
                         r"[A-Za-z0-9+/]+={0,3}(?: [^\n]*)?")
# A deployment id travels as an Azure tag value, a NATS message id and a file field.
_DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
_LONG_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")

_SIZE_RULE = (_SIZE, "a VM size of letters, digits, '_' and '-', e.g. Standard_D2s_v5")
_USER_RULE = (_USER, "a user name of 1-32 of a-z, 0-9, '_' and '-', starting with a letter "
                     "or '_'")
# field: (pattern, what it must be).
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "name": (_VM_NAME, "1-64 letters, digits, '-' or '.' (no '_'), starting and ending "
                       "with a letter or digit, not only digits"),
    "resource_group": (_RESOURCE_GROUP, "1-90 letters, digits, '_', '-', '.', '(' or ')' "
                                        "and not end with '.'"),
    "location": (_LOCATION, "a region name of letters and digits, e.g. westus2"),
    "size": _SIZE_RULE,
    "fallback_sizes": _SIZE_RULE,
    "image": (_IMAGE, "an alias (Ubuntu2204), a URN publisher:offer:sku:version or an "
                      "image resource id"),
    "admin_username": _USER_RULE,
    "ssh_user": _USER_RULE,
    "ssh_key_name": (_NAME_OR_ID, "an SSH key resource name (1-80 letters, digits, '_', '.', "
                                  "'-') or id"),
    "vnet_name": (_NAME, "1-80 letters, digits, '_', '.' or '-', starting and ending with "
                         "a letter, digit or '_'"),
    "subnet": (_NAME_OR_ID, "a subnet name (1-80 letters, digits, '_', '.', '-') or id"),
    "nsg": (_NAME_OR_ID, "a network security group name (1-80 letters, digits, '_', '.', "
                         "'-') or id"),
    "tags": (_TAG_KEY, "a tag name of 1-512 characters without < > % & \\ ? / ="),
    "tag_value": (_TAG_VALUE, "at most 256 characters"),
}
# Checked elsewhere: choices against their lists and ssh_public_key as a whole key (vmspec),
# extra_args below; custom_data is a file path or file content, never an argument.
_SKIPPED = frozenset({"zone", "fallback_zones", "priority", "eviction_policy", "public_ip_sku",
                      "cloud_init_check", "ssh_public_key", "extra_args", "custom_data"})
# Flags the tool sets on `az vm create` itself, or whose effect it cannot live with
# (--query/--output change what it parses, --no-wait ends the create at once, --debug and
# --verbose print request bodies, custom data included, into the stderr it reports).
TOOL_FLAGS = frozenset({
    "--resource-group", "--name", "--location", "--image", "--size", "--priority",
    "--admin-username", "--public-ip-sku", "--zone", "--eviction-policy", "--ssh-key-name",
    "--ssh-key-values", "--vnet-name", "--subnet", "--nsg", "--custom-data",
    "--os-disk-size-gb", "--tags", "--nic-delete-option", "--os-disk-delete-option",
    "--output", "--only-show-errors", "--query", "--no-wait", "--debug", "--verbose",
})


# az reads a file for any argv word `@path` or `key=@path` (tags, `--flag=@path`): on a
# worker a request could put the host's files (tokens, the NATS password) into a tag.
_AT_FILE = "must not start with '@' (az would read a file of that name)"


def show(value: str, limit: int = 60) -> str:
    """A value for an error message: quoted, escaped, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def unsafe(value: str) -> str | None:
    """Why a value may not reach an argv at all, or None."""
    if value.startswith("-"):
        return "must not start with '-'"
    if value.startswith("@"):
        return _AT_FILE
    if not value.isprintable():
        return "must not hold control characters or line breaks"
    return None


def value_problems(spec: Any, p: str) -> list[str]:
    """One problem per bad value of the spec's argv fields, each naming its field."""
    problems = []
    for label, key, value in _values(spec):
        if (why := field_problem(key, value)) is not None:
            shown = "" if key == "name" else f" {show(value)}"  # "VM 'x': name must be..."
            problems.append(f"{p}: {label}{shown} {why}")
    return problems


def field_problem(key: str, value: str) -> str | None:
    """Why one value of spec field `key` may not reach an argv, or None (e.g. a resource
    group that did not come with a spec: `status --live`)."""
    rule = _FORMATS.get(key)
    return f"must be {rule[1]}" if rule and not rule[0].fullmatch(value) else unsafe(value)


def _values(spec: Any) -> Iterator[tuple[str, str, str]]:
    """(label, field, value) of every string that may reach an argv."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.name in _SKIPPED:
            continue
        if isinstance(value, str):
            yield f.name, f.name, value
        elif isinstance(value, list):
            yield from ((f"{f.name}[{i}]", f.name, v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():  # tags, the only mapping
                yield f"{f.name} key", f.name, key
                yield f"{f.name}[{key!r}]", "tag_value", item


def public_key_problem(content: str) -> str | None:
    """Why `content` is not one OpenSSH public key line, or None."""
    if _PUBLIC_KEY.fullmatch(content) and content.isprintable():
        return None
    return "must be one line holding an OpenSSH public key (ssh-ed25519 AAAA... comment)"


def deployment_id_problem(value: str) -> str | None:
    if _DEPLOYMENT_ID.fullmatch(value):
        return None
    return (f"deployment_id {show(value)} must be 1-80 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")


def flag_problem(flag: str) -> str | None:
    """Why `flag` may not be passed to az vm create by a plan or request, or None."""
    if not _LONG_FLAG.fullmatch(flag):
        return "must be a long flag (--flag) of a-z, 0-9 and '-'"
    # az accepts any unique prefix of a long option: "--tag" is "--tags".
    taken = sorted(tool for tool in TOOL_FLAGS if tool.startswith(flag))
    if taken:
        return f"would set {taken[0]}, which the tool sets itself"
    return None


def allow_list_problems(flags: Collection[str]) -> list[str]:
    """What is wrong with a worker's `--allow-extra-arg` flags."""
    return [f"{flag!r} {why}" for flag in flags if (why := flag_problem(flag)) is not None]


def extra_arg_problems(args: list[str], allowed: Collection[str] | None, p: str) -> list[str]:
    """Extra args are flags (each optionally `=value`) each followed by its values.

    `allowed` None: any flag but the tool's own (the operator's plan or command line);
    otherwise only the flags named (a worker's `--allow-extra-arg`).
    """
    problems = []
    for index, arg in enumerate(args):
        label = f"{p}: extra_args[{index}] {show(arg)}"
        flag = arg.split("=", 1)[0]
        if not arg or not arg.isprintable():
            problems.append(f"{label} must be non-empty, without control characters")
        elif index == 0 and not arg.startswith("-"):
            problems.append(f"{label} must be a flag: extra args start with one")
        elif arg.split("=", 1)[-1].startswith("@"):
            problems.append(f"{label} has a value starting with '@' (az would read a file "
                            "of that name)")
        elif arg.startswith("-") and (why := flag_problem(flag)) is not None:
            problems.append(f"{label} {why}")
        elif arg.startswith("-") and allowed is not None and flag not in allowed:
            problems.append(f"{label} is not allowed by this worker (start it with "
                            f"--allow-extra-arg={flag})")
    return problems


def extra_flags(specs: Collection[Any]) -> tuple[str, ...]:
    """The flags the specs' extra args use, sorted: what their workers must allow."""
    return tuple(sorted({arg.split("=", 1)[0] for spec in specs for arg in spec.extra_args
                         if arg.startswith("--")}))

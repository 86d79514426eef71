"""Hostile values in every spec field that reaches an argv, and the ssh `--` (in process,
plus one real `ssh` client run; no Azure, no NATS)."""

from __future__ import annotations

import socket
import subprocess
import typing

import pytest

from vmlaunch.azure import azcli, verify
from vmlaunch.schema import speccheck
from vmlaunch.schema.vmspec import SPEC_FIELDS, VMSpec, spec_problems

BASE = {"name": "k0s-worker-1", "resource_group": "rg-test", "image": "Ubuntu2204",
        "location": "westus2"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx ops@host"
PROXY = "-oProxyCommand=sh -c 'touch {};#'"


def problems(files_are_paths: bool = False, allowed: set[str] | None = None,
             **fields: typing.Any) -> list[str]:
    spec = VMSpec.from_dict({**BASE, **fields})
    return spec_problems(spec, files_are_paths=files_are_paths, allowed_extra_args=allowed)


HOSTILE = [
    pytest.param("name", "vm_1", "name must be", id="name-underscore"),
    pytest.param("name", "vm1\n", "name must be", id="name-trailing-newline"),
    pytest.param("name", "vm1.", "name must be", id="name-trailing-dot"),
    pytest.param("name", "vm1-", "name must be", id="name-trailing-hyphen"),
    pytest.param("name", "-vm1", "name must be", id="name-leading-hyphen"),
    pytest.param("name", "12345", "name must be", id="name-only-digits"),
    pytest.param("name", "a" * 65, "name must be", id="name-too-long"),
    pytest.param("resource_group", "-rg", "resource_group '-rg' must not start with '-'",
                 id="rg-flag"),
    pytest.param("resource_group", "rg\n", "resource_group 'rg\\n' must be", id="rg-newline"),
    pytest.param("resource_group", "rg.", "resource_group 'rg.' must be", id="rg-trailing-dot"),
    pytest.param("location", "--debug", "location '--debug' must be", id="location-flag"),
    pytest.param("location", "westus2\n", "location 'westus2\\n' must be",
                 id="location-newline"),
    pytest.param("size", "-x", "size '-x' must be", id="size-flag"),
    pytest.param("size", "Standard_D2s_v5 --role Owner", "size 'Standard_D2s_v5 --role Owner'",
                 id="size-space"),
    pytest.param("image", "--assign-identity", "image '--assign-identity' must be",
                 id="image-flag"),
    pytest.param("image", "Ubuntu2204\n", "image 'Ubuntu2204\\n' must be", id="image-newline"),
    pytest.param("image", "a:b:c", "image 'a:b:c' must be", id="image-short-urn"),
    pytest.param("admin_username", "Root", "admin_username 'Root' must be a user name",
                 id="admin-uppercase"),
    pytest.param("admin_username", "-oX", "admin_username '-oX' must be", id="admin-flag"),
    pytest.param("ssh_user", PROXY.format("/tmp/x"), "ssh_user \"-oProxyCommand",
                 id="ssh-user-proxycommand"),
    pytest.param("ssh_user", "ops\n", "ssh_user 'ops\\n' must be", id="ssh-user-newline"),
    pytest.param("ssh_user", "a" * 33, "ssh_user", id="ssh-user-too-long"),
    pytest.param("ssh_key_name", "--generate-ssh-keys", "ssh_key_name '--generate-ssh-keys'",
                 id="key-name-flag"),
    pytest.param("vnet_name", "vnet\r", "vnet_name 'vnet\\r' must be", id="vnet-cr"),
    pytest.param("subnet", "-s", "subnet '-s' must be", id="subnet-flag"),
    pytest.param("nsg", "nsg x", "nsg 'nsg x' must be", id="nsg-space"),
    pytest.param("fallback_sizes", ["Standard_B2s", "-x"], "fallback_sizes[1] '-x' must be",
                 id="fallback-size-flag"),
    pytest.param("tags", {"-k": "v"}, "tags key '-k' must not start with '-'",
                 id="tag-key-flag"),
    pytest.param("tags", {"a=b": "c"}, "tags key 'a=b' must be", id="tag-key-equals"),
    pytest.param("tags", {"team": "ml\n--role"},
                 "tags['team'] 'ml\\n--role' must not hold control", id="tag-value-newline"),
    pytest.param("tags", {"team": "-x"}, "tags['team'] '-x' must not start with '-'",
                 id="tag-value-flag"),
    pytest.param("tags", {"team": "x" * 257}, "tags['team']", id="tag-value-too-long"),
    pytest.param("tags", {"team": "@/etc/shadow"}, "tags['team'] '@/etc/shadow' must not "
                 "start with '@' (az would read a file", id="tag-value-reads-a-file"),
    pytest.param("ssh_public_key", f"{KEY}\n{KEY}", "ssh_public_key must be one line",
                 id="public-key-two-lines"),
    pytest.param("ssh_public_key", "--role Owner", "ssh_public_key must be one line",
                 id="public-key-flag"),
    pytest.param("extra_args", ["--assign-identity", "--role", "Owner"], None,
                 id="extra-args-ok-for-the-operator"),
]


@pytest.mark.parametrize(("name", "value", "words"), HOSTILE)
def test_each_hostile_value_is_one_problem_naming_its_field(name, value, words):
    found = problems(**{name: value})
    if words is None:
        assert found == []
        return
    assert len(found) == 1, found
    assert found[0].startswith(f"VM {(value if name == 'name' else BASE['name'])!r}: {name}")
    assert words in found[0]


VALID = [
    pytest.param({"name": "vm1"}, id="short-name"),
    pytest.param({"name": "k0s.worker-1", "resource_group": "my_rg(1).x-y"}, id="dotted"),
    pytest.param({"image": "Debian:debian-12:12-gen2:latest"}, id="urn"),
    pytest.param({"image": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest"},
                 id="urn-underscore"),
    pytest.param({"image": "/subscriptions/0000/resourceGroups/img-rg/providers/"
                           "Microsoft.Compute/galleries/g/images/k0s/versions/1.0.0"},
                 id="gallery-image-id"),
    pytest.param({"size": "Standard_M128-32ms", "fallback_sizes": ["Standard_D4pds_v6"]},
                 id="constrained-size"),
    pytest.param({"admin_username": "k0rdent", "ssh_user": "_svc-1"}, id="users"),
    pytest.param({"subnet": "/subscriptions/0000/resourceGroups/net/providers/"
                            "Microsoft.Network/virtualNetworks/v/subnets/s",
                  "vnet_name": "k0rdent-vnet", "nsg": "k0rdent-nsg",
                  "ssh_key_name": "k0rdent-admin"}, id="network-by-id-and-name"),
    pytest.param({"tags": {"cost center": "ML team 1", "empty": ""}}, id="tags"),
    pytest.param({"ssh_public_key": KEY}, id="public-key-content"),
    pytest.param({"custom_data": "#cloud-config\nruncmd:\n  - [sh, -c, 'echo -x']\n"},
                 id="custom-data-may-hold-anything"),
    pytest.param({"extra_args": ["--accelerated-networking", "true",
                                 "--storage-sku=Premium_LRS"]}, id="extra-args"),
]


@pytest.mark.parametrize("fields", VALID)
def test_valid_specs_stay_valid(fields):
    assert problems(**fields) == []


def test_every_text_field_refuses_a_value_that_starts_with_a_dash():
    """Guards new fields: each string field that is not a choice or a file is checked."""
    skipped = {"custom_data", "extra_args", "ssh_public_key", "zone", "priority",
               "eviction_policy", "public_ip_sku", "cloud_init_check", "fallback_zones"}
    text = [name for name, hint in SPEC_FIELDS.items()
            if name not in skipped and hint in (str, str | None, list[str])]
    assert "ssh_user" in text and "fallback_sizes" in text
    for name in text:
        value = ["-x"] if SPEC_FIELDS[name] == list[str] else "-x"
        found = problems(**{name: value})
        assert [p for p in found if f": {name}" in p], (name, found)


EXTRA = [
    pytest.param(["true"], "extra_args[0] 'true' must be a flag", id="value-first"),
    pytest.param(["--tags", "a=b"], "would set --tags", id="tool-flag"),
    pytest.param(["--tag", "a=b"], "'--tag' would set --tags", id="abbreviation-of-tool-flag"),
    pytest.param(["--custom-data=/etc/shadow"], "would set --custom-data", id="with-equals"),
    pytest.param(["--admin-username", "root"], "would set --admin-username", id="admin"),
    pytest.param(["--name", "other-vm"], "would set --name", id="name"),
    pytest.param(["--debug"], "would set --debug", id="debug-prints-custom-data"),
    pytest.param(["-g", "other-rg"], "'-g' must be a long flag", id="short-flag"),
    pytest.param(["--accelerated-networking", "true\n"], "without control characters",
                 id="newline-in-value"),
    pytest.param(["--Role"], "must be a long flag", id="odd-flag"),
    pytest.param(["--accelerated-networking", "@/etc/shadow"], "value starting with '@'",
                 id="value-reads-a-file"),
    pytest.param(["--storage-sku=@/etc/shadow"], "value starting with '@'",
                 id="equals-value-reads-a-file"),
    pytest.param(["--accelerated-networking", "k=@/etc/shadow"], "value starting with '@'",
                 id="key-value-reads-a-file"),
]


@pytest.mark.parametrize(("args", "words"), EXTRA)
def test_extra_args_may_not_set_what_the_tool_sets(args, words):
    (found,) = problems(extra_args=args)
    assert found.startswith("VM 'k0s-worker-1': extra_args[") and words in found


def test_a_worker_allows_only_the_extra_arg_flags_it_was_told():
    args = ["--accelerated-networking", "true", "--assign-identity", "--role", "Owner"]
    found = problems(extra_args=args, allowed={"--accelerated-networking"})
    assert found == [
        "VM 'k0s-worker-1': extra_args[2] '--assign-identity' is not allowed by this worker "
        "(start it with --allow-extra-arg=--assign-identity)",
        "VM 'k0s-worker-1': extra_args[3] '--role' is not allowed by this worker "
        "(start it with --allow-extra-arg=--role)"]
    assert problems(extra_args=args[:2], allowed={"--accelerated-networking"}) == []
    assert problems(extra_args=["--accelerated-networking=true"], allowed=set()) != []


def test_the_plan_flags_are_what_embedded_workers_allow():
    specs = [VMSpec.from_dict({**BASE, "extra_args": ["--storage-sku=Premium_LRS"]}),
             VMSpec.from_dict({**BASE, "name": "b", "extra_args": [
                 "--accelerated-networking", "true"]}),
             VMSpec.from_dict({**BASE, "name": "c"})]
    assert speccheck.extra_flags(specs) == ("--accelerated-networking", "--storage-sku")


def test_the_tool_flags_cover_every_flag_the_create_argv_sets():
    spec = VMSpec.from_dict({**BASE, "zone": "1", "priority": "Spot",
                             "eviction_policy": "Delete", "ssh_public_key": KEY,
                             "vnet_name": "v", "subnet": "s", "nsg": "n",
                             "os_disk_size_gb": 64, "ssh_key_name": "k"})
    argv = azcli.vm_create_args(spec, deployment_id="d", custom_data_path="/tmp/cd")
    assert {arg for arg in argv if arg.startswith("--")} <= speccheck.TOOL_FLAGS


@pytest.mark.parametrize(("value", "ok"), [
    ("k0rdent-q7x2m9ab", True), ("manual-vm1", True), ("dep\n", False), ("-dep", False),
    ("dep 1", False), ("d" * 81, False)])
def test_deployment_ids_are_checked_whole(value, ok):
    assert (speccheck.deployment_id_problem(value) is None) is ok


def test_a_public_key_file_must_hold_one_key(tmp_path):
    good, bad = tmp_path / "id.pub", tmp_path / "two.pub"
    good.write_text(KEY + "\n")
    bad.write_text(f"{KEY}\n{KEY}\n")
    assert problems(files_are_paths=True, ssh_public_key=str(good)) == []
    (found,) = problems(files_are_paths=True, ssh_public_key=str(bad))
    assert f"ssh_public_key file {str(bad)!r} must be one line" in found


# --- ssh: the destination is never an option -------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ssh_args_end_the_options_before_the_destination():
    port = _closed_port()
    spec = VMSpec.from_dict({**BASE, "ssh_user": "ops", "ssh_port": port,
                             "ssh_connect_timeout": 1})
    argv = verify.ssh_args(spec, ip="127.0.0.1", private_key=None, command="true")
    assert argv[-3:] == ["--", "ops@127.0.0.1", "true"]
    assert argv.count("--") == 1
    # The real client takes that form: it goes on to connect.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert f"port {port}: Connection refused" in done.stderr


def test_a_hostile_ssh_user_is_never_read_as_an_ssh_option(tmp_path):
    """The real ssh client: with `--` the ProxyCommand stays part of a user name. The same
    argv without `--` runs it, which shows the value is live."""
    marker = tmp_path / "pwned"
    spec = VMSpec(**BASE, ssh_user=PROXY.format(marker), ssh_port=_closed_port(),
                  ssh_connect_timeout=1)  # built directly: no validation on the way
    argv = verify.ssh_args(spec, ip="127.0.0.1", private_key=None, command="true")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    assert not marker.exists()

    without = [arg for arg in argv if arg != "--"]
    subprocess.run(without, capture_output=True, text=True, timeout=20)
    assert marker.exists()


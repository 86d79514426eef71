"""Plans from every source, and whole-plan validation (in process: no Azure, no NATS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO

from vmlaunch.plans.frombash import host_key
from vmlaunch.plans.plan import PlanError
from vmlaunch.plans.sources import PlanSource, load_plan

HOSTS = ("k0s-controller-1", "k0s-controller-2", "k0s-controller-3", "k0s-worker-1",
         "k0s-worker-2")


def write_plan(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def problems_of(source: PlanSource, tmp_path: Path, **kwargs) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(source, cwd=tmp_path, **kwargs)
    return caught.value.problems


@pytest.fixture
def k0rdent_dir(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    shutil.copy(DATA / "sample-k0rdent-config.yaml", tmp_path / "config" / "k0rdent.yaml")
    (tmp_path / ".clusterid").write_text("k0rdent-abcd1234\n")
    (tmp_path / "cloud-init-yaml").mkdir()
    for host in HOSTS:
        (tmp_path / "cloud-init-yaml" / f"{host}-cloud-init.yaml").write_text("#cloud-config\n")
    return tmp_path


def test_a_plan_file_merges_defaults_command_line_and_per_vm_fields(tmp_path):
    (tmp_path / "ci.yaml").write_text("#cloud-config\n")
    path = write_plan(tmp_path, {
        "deployment_id": "dep-1", "resource_group": "rg-1", "location": "westus2",
        "deadline": 60, "defaults": {"image": "Debian12", "size": "S1", "max_attempts": 5},
        "vms": [{"name": "a", "zone": 1, "custom_data": "ci.yaml"},
                {"name": "b", "size": "S3", "fallback_zones": [2, 3]}, "c"],
    })
    plan = load_plan(PlanSource(plan_file=path), overrides={"size": "S2", "max_attempts": 2},
                     cwd=tmp_path)

    assert plan.names == ["a", "b", "c"]
    a, b, _ = plan.vms
    assert (a.zone, a.size, a.max_attempts, a.location) == ("1", "S2", 2, "westus2")
    assert a.custom_data == str(tmp_path / "ci.yaml")  # relative to the plan file
    assert (b.size, b.fallback_zones) == ("S3", ["2", "3"])
    assert {vm.resource_group for vm in plan.vms} == {"rg-1"}
    assert plan.deadline == 60.0


def test_every_problem_of_a_plan_file_is_listed_at_once(tmp_path):
    path = write_plan(tmp_path, {
        "resource_group": "rg.", "deadline": "soon", "extra": 1,
        "defaults": {"image": "img", "name": "x", "priority": "Regular",
                     "eviction_policy": "Delete", "max_attempts": "three"},
        "vms": [{"name": "a"}, {"name": "a"}, {"name": "b", "resource_group": "other"},
                {"name": "c", "custom_data": "nope.yaml"}, {"zone": 1}],
    })
    problems = "\n".join(problems_of(PlanSource(plan_file=path), tmp_path))

    for words in ("extra: unknown top-level key", "deployment_id is required",
                  "deadline: expected a number", "defaults.name: set name per VM",
                  "max_attempts: expected an integer",
                  "vms[2] (b).resource_group: every VM", "vms[4]: expected a mapping with a name",
                  "resource_group 'rg.' must be", "'a' is listed 2 times", "nope.yaml",
                  "eviction_policy is only allowed"):
        assert words in problems
    assert problems.count("resource_group 'rg.'") == 1  # once for the plan, not per VM


@pytest.mark.parametrize(("vms", "expected"), [
    (["web-1"], [("web-1", None, "Standard_D2s_v5")]),
    (["web-1:2"], [("web-1", "2", "Standard_D2s_v5")]),
    (["web-1:3:Standard_B2s", "web-2::Standard_B1s"],
     [("web-1", "3", "Standard_B2s"), ("web-2", None, "Standard_B1s")]),
], ids=["name", "name-zone", "name-zone-size"])
def test_vm_options_give_names_zones_and_sizes(tmp_path, vms, expected):
    plan = load_plan(PlanSource(vms=tuple(vms), resource_group="rg-1"),
                     overrides={"image": "Debian12"}, cwd=tmp_path)
    assert [(vm.name, vm.zone, vm.size) for vm in plan.vms] == expected
    assert plan.deployment_id == "rg-1"


@pytest.mark.parametrize(("source", "words"), [
    (PlanSource(vms=("a",)), "resource_group is required (with --vm: --resource-group)"),
    (PlanSource(vms=("a:1:S:x",), resource_group="rg"), "expected NAME[:ZONE[:SIZE]]"),
    (PlanSource(vms=("a",), resource_group="rg", cluster_id="k"), "--cluster-id is used only"),
    (PlanSource(from_env=True, resource_group="rg"), "--resource-group is used only with --vm"),
    (PlanSource(vms=("a:7",), resource_group="rg"), "zone '7' must be one of"),
], ids=["no-group", "too-many-parts", "cluster-id", "group-without-vm", "bad-zone"])
def test_bad_command_line_plans_are_refused(tmp_path, source, words):
    assert words in "\n".join(problems_of(source, tmp_path, overrides={"image": "i"}, env={}))


def test_two_plan_sources_are_refused(tmp_path):
    problems = problems_of(PlanSource(vms=("a",), from_env=True), tmp_path)
    assert problems == ["give only one plan source, not --vm and --from-env"]


def test_the_k0rdent_config_is_found_where_the_bash_loader_looks(k0rdent_dir):
    plan = load_plan(PlanSource(), cwd=k0rdent_dir)

    assert plan.deployment_id == "k0rdent-abcd1234"
    assert plan.names == list(HOSTS)
    assert [vm.zone for vm in plan.vms] == ["1", "2", "3", "2", "3"]
    assert plan.ssh_private_key == str(k0rdent_dir / "azure-resources" /
                                       "k0rdent-abcd1234-ssh-key")
    assert {vm.cloud_init_check for vm in plan.vms} == {"ssh"}
    assert plan.origin.endswith("config/k0rdent.yaml")


def test_the_default_config_is_the_fallback_and_spot_keeps_its_eviction_policy(k0rdent_dir):
    config = yaml.safe_load((k0rdent_dir / "config" / "k0rdent.yaml").read_text())
    config["azure"]["vm_priority"] = "Spot"
    (k0rdent_dir / "config" / "k0rdent.yaml").unlink()
    (k0rdent_dir / "config" / "k0rdent-default.yaml").write_text(yaml.safe_dump(config))

    plan = load_plan(PlanSource(cluster_id="k0rdent-other"), cwd=k0rdent_dir)

    assert plan.resource_group == "k0rdent-other-resgrp"
    assert {(vm.priority, vm.eviction_policy) for vm in plan.vms} == {("Spot", "Deallocate")}


def test_no_plan_and_no_config_names_where_it_looked(tmp_path):
    (problem,) = problems_of(PlanSource(), tmp_path)
    assert "./config/k0rdent.yaml and ./config/k0rdent-default.yaml" in problem


def test_a_k0rdent_config_without_cluster_id_or_cloud_init_files_is_refused(k0rdent_dir):
    (k0rdent_dir / ".clusterid").unlink()
    (k0rdent_dir / "cloud-init-yaml" / "k0s-worker-2-cloud-init.yaml").unlink()
    problems = "\n".join(problems_of(PlanSource(), k0rdent_dir))
    assert "no cluster id: give --cluster-id" in problems
    assert "k0s-worker-2-cloud-init.yaml' cannot be read" in problems


def test_the_environment_of_a_bash_caller_is_a_plan(tmp_path):
    (tmp_path / "ci").mkdir()
    for host in ("k0s-controller-1", "k0s-worker-1"):
        (tmp_path / "ci" / f"{host}-cloud-init.yaml").write_text("#cloud-config\n")
    env = {
        "RG": "rg-env", "VM_HOSTS": "k0s-controller-1 k0s-worker-1",
        "VM_ZONE_K0S_CONTROLLER_1": "1", "VM_ZONE_K0S_WORKER_1": "3",
        "VM_SIZE_K0S_WORKER_1": "Standard_D8", "AZURE_CONTROLLER_VM_SIZE": "Standard_D4",
        "AZURE_VM_IMAGE": "Debian12", "AZURE_VM_PRIORITY": "Regular",
        "AZURE_EVICTION_POLICY": "Delete", "SSH_USERNAME": "k0rdent",
        "CLOUD_INIT_DIR": str(tmp_path / "ci"), "VM_CREATION_TIMEOUT_MINUTES": "10",
        "VM_WAIT_CHECK_INTERVAL": "15", "K0RDENT_CLUSTERID": "k0rdent-env",
        "NSG_NAME": "nsg-1",
    }
    plan = load_plan(PlanSource(from_env=True), env=env, cwd=tmp_path)

    assert plan.deployment_id == "k0rdent-env"
    assert [(vm.name, vm.zone, vm.size) for vm in plan.vms] == [
        ("k0s-controller-1", "1", "Standard_D4"), ("k0s-worker-1", "3", "Standard_D8")]
    assert {(vm.eviction_policy, vm.nsg, vm.admin_username, vm.create_timeout)
            for vm in plan.vms} == {(None, "nsg-1", "k0rdent", 600.0)}
    assert (plan.deadline, plan.poll_interval) == (600.0, 15.0)
    assert plan.vms[1].custom_data == str(tmp_path / "ci" / "k0s-worker-1-cloud-init.yaml")


def test_a_missing_environment_is_reported_variable_by_variable(tmp_path):
    problems = problems_of(PlanSource(from_env=True), tmp_path,
                           env={"VM_CREATION_TIMEOUT_MINUTES": "soon"})
    for name in ("RG", "VM_HOSTS", "AZURE_VM_IMAGE", "VM_CREATION_TIMEOUT_MINUTES='soon'"):
        assert any(name in p for p in problems), name


def test_host_names_become_variable_suffixes():
    assert host_key("k0s-worker-1") == "K0S_WORKER_1"
    assert host_key("web.a_b") == "WEB_A_B"


def test_the_documented_example_plan_is_valid(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO / "docs" / "example-plan.yaml", tmp_path / "docs" / "example-plan.yaml")
    (tmp_path / "cloud-init-yaml").mkdir()
    for host in HOSTS:
        (tmp_path / "cloud-init-yaml" / f"{host}-cloud-init.yaml").write_text("#cloud-config\n")

    plan = load_plan(PlanSource(plan_file=tmp_path / "docs" / "example-plan.yaml"),
                     cwd=tmp_path)

    assert plan.names == list(HOSTS)
    assert plan.vms[3].fallback_zones == ["3", "1"]

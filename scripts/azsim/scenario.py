"""The AZ_SIM_SCENARIO file of the az simulator: validation, loading and per-VM rule lookup.

See docs/az-simulator.md for the scenario format.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

DEFAULTS = {"create_seconds": 60.0, "delete_seconds": 20.0, "run_command_seconds": 20.0,
            "cloud_init_seconds": 0.0}
RULE_KEYS = {"match", "attempts", "fail", "fail_phase", "fail_message", "left_failed", "hang",
             "cloud_init", *DEFAULTS}
TOP_KEYS = {"time_scale", "location", "resource_groups", "logged_in", "public_ip",
            "public_ip_early", "nic_reservation_seconds", "lro_poll_seconds", "put_vm_budget",
            "defaults", "throttle", "faults", "vms"}
FAULT_KEYS = {"rate", "seed", "codes", "commands", "retry_after"}
CLOUD_INIT_MODES = ("done", "degraded", "error", "never")
LRO_POLL_SECONDS = 30.0  # azure-core's polling interval when ARM sends no Retry-After
# The Compute RP's per-subscription VM write limits (azure-cli.md section 6): operation type ->
# at most `calls` VM creates or updates in any `seconds` (simulated) window.
PUT_VM_BUDGET = {"PutVM3Min": {"calls": 240, "seconds": 180},
                 "PutVM30Min": {"calls": 1200, "seconds": 1800}}


class ScenarioError(ValueError):
    pass


def _check_number(problems: list[str], where: str, value, *, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        problems.append(f"{where} must be a number >= {minimum:g}, not {value!r}")


def _check_rule(problems: list[str], where: str, rule) -> None:
    if not isinstance(rule, dict):
        problems.append(f"{where} must be a mapping")
        return
    problems.extend(f"{where}: unknown key {k!r}" for k in sorted(set(rule) - RULE_KEYS))
    if not isinstance(rule.get("match"), str):
        problems.append(f"{where}.match must be a string (an fnmatch pattern)")
    attempts = rule.get("attempts")
    if attempts is not None and not (isinstance(attempts, list) and all(
            isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in attempts)):
        problems.append(f"{where}.attempts must be a list of integers >= 1")
    for key in DEFAULTS.keys() & rule.keys():
        _check_number(problems, f"{where}.{key}", rule[key])
    if rule.get("fail_phase", "async") not in ("async", "preflight"):
        problems.append(f"{where}.fail_phase must be async or preflight")
    if rule.get("cloud_init", "done") not in CLOUD_INIT_MODES:
        problems.append(f"{where}.cloud_init must be one of {', '.join(CLOUD_INIT_MODES)}")
    for key in ("left_failed", "hang"):
        if key in rule and not isinstance(rule[key], bool):
            problems.append(f"{where}.{key} must be true or false")
    for key in ("fail", "fail_message"):
        if rule.get(key) is not None and not isinstance(rule[key], str):
            problems.append(f"{where}.{key} must be a string")


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_faults(problems: list[str], faults) -> None:
    if not isinstance(faults, dict):
        problems.append("faults must be a mapping of " + ", ".join(sorted(FAULT_KEYS)))
        return
    problems.extend(f"faults: unknown key {k!r}" for k in sorted(set(faults) - FAULT_KEYS))
    rate = faults.get("rate", 0.0)
    _check_number(problems, "faults.rate", rate)
    if isinstance(rate, int | float) and rate > 1:
        problems.append(f"faults.rate must be at most 1, not {rate!r}")
    _check_number(problems, "faults.retry_after", faults.get("retry_after", 5))
    seed = faults.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"faults.seed must be an integer, not {seed!r}")
    codes = faults.get("codes", ["TooManyRequests"])
    if not (_is_names(codes) and codes):
        problems.append("faults.codes must be a non-empty list of Azure error codes")
    if not _is_names(faults.get("commands", [])):
        problems.append("faults.commands must be a list such as ['vm show']")


def _check_defaults(problems: list[str], defaults) -> None:
    if not isinstance(defaults, dict):
        problems.append("defaults must be a mapping")
        return
    problems.extend(f"defaults: unknown key {k!r}" for k in sorted(set(defaults) - DEFAULTS.keys()))
    for key, value in defaults.items():
        _check_number(problems, f"defaults.{key}", value)


def _check_budget(problems: list[str], budget) -> None:
    if not isinstance(budget, dict):
        problems.append("put_vm_budget must be a mapping such as {PutVM3Min: {calls: 240, "
                        "seconds: 180}}, or {} for none")
        return
    for name, bucket in budget.items():
        where = f"put_vm_budget.{name}"
        if not isinstance(bucket, dict) or set(bucket) != {"calls", "seconds"}:
            problems.append(f"{where} must be a mapping of calls and seconds")
            continue
        _check_number(problems, f"{where}.calls", bucket["calls"], minimum=1)
        _check_number(problems, f"{where}.seconds", bucket["seconds"], minimum=1e-6)


def _check_throttle(problems: list[str], throttle) -> None:
    if not isinstance(throttle, dict) or set(throttle) - {"first_calls", "after_calls", "code",
                                                          "commands", "message"}:
        problems.append("throttle must be a mapping of first_calls, after_calls, code, "
                        "commands, message")
        return
    _check_number(problems, "throttle.first_calls", throttle.get("first_calls", 0))
    _check_number(problems, "throttle.after_calls", throttle.get("after_calls", 0))
    if not isinstance(throttle.get("commands", []), list):
        problems.append("throttle.commands must be a list such as ['vm create']")


def _check_scenario(data: dict) -> list[str]:
    """Every problem of a scenario, so that one run reports them all."""
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(data) - TOP_KEYS)]
    _check_number(problems, "time_scale", data.get("time_scale", 1.0), minimum=1e-6)
    _check_number(problems, "nic_reservation_seconds", data.get("nic_reservation_seconds", 0))
    _check_number(problems, "lro_poll_seconds", data.get("lro_poll_seconds", LRO_POLL_SECONDS))
    _check_budget(problems, data.get("put_vm_budget", {}))
    for key in ("logged_in", "public_ip_early"):
        if not isinstance(data.get(key, False), bool):
            problems.append(f"{key} must be true or false")
    for key in ("location", "public_ip"):
        if not isinstance(data.get(key, ""), str):
            problems.append(f"{key} must be a string")
    groups = data.get("resource_groups", [])
    if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        problems.append("resource_groups must be a list of names")
    _check_defaults(problems, data.get("defaults", {}))
    _check_throttle(problems, data.get("throttle", {}))
    _check_faults(problems, data.get("faults", {}))
    rules = data.get("vms", [])
    if isinstance(rules, list):
        for i, rule in enumerate(rules):
            _check_rule(problems, f"vms[{i}]", rule)
    else:
        problems.append("vms must be a list of rules")
    return problems


class Scenario:
    """The AZ_SIM_SCENARIO file. Durations it returns are already multiplied by time_scale."""

    def __init__(self, data: dict | None = None) -> None:
        data = data or {}
        self.scale = float(data.get("time_scale", 1.0))
        self.location = data.get("location", "westus2")
        groups = data.get("resource_groups")
        self.groups = None if groups is None else {g.lower() for g in groups}
        self.logged_in = data.get("logged_in", True)
        self.public_ip = data.get("public_ip")
        self.public_ip_early = data.get("public_ip_early", False)
        self.nic_reservation_raw = float(data.get("nic_reservation_seconds", 0))
        self.lro_poll = float(data.get("lro_poll_seconds", LRO_POLL_SECONDS)) * self.scale
        self.put_vm_budget = data.get("put_vm_budget", PUT_VM_BUDGET)
        self.defaults = {**DEFAULTS, **data.get("defaults", {})}
        self.throttle = data.get("throttle") or {}
        self.faults = data.get("faults") or {}
        self.rules = data.get("vms") or []

    def rg_exists(self, rg: str) -> bool:
        return self.groups is None or rg.lower() in self.groups

    def setting(self, name: str, attempt: int, key: str, default=None):
        """Per key, the first rule that matches the name and attempt and sets the key wins."""
        for rule in self.rules:
            attempts = rule.get("attempts")
            if key in rule and fnmatchcase(name, rule["match"]) and (
                    attempts is None or attempt in attempts):
                return rule[key]
        return self.defaults.get(key, default)

    def fault(self, call: int) -> dict | None:
        """The error of the `call`-th call that matches `faults`, or None: a pure function of
        the seed and the call number, so that a run reproduces."""
        import random  # ~2.5 ms of every call's start otherwise, and only faults need it

        rng = random.Random(f"{self.faults.get('seed', 0)}/{call}")
        if rng.random() >= self.faults.get("rate", 0.0):
            return None
        code = rng.choice(self.faults.get("codes") or ["TooManyRequests"])
        return {"code": code, "retry_after": self.faults.get("retry_after", 5)}

    def seconds(self, name: str, attempt: int, key: str) -> float:
        return float(self.setting(name, attempt, key)) * self.scale


def load_scenario(path: str | None) -> Scenario:
    if not path:
        return Scenario()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ScenarioError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text)  # JSON is YAML too, and needs no yaml import
    except ValueError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ScenarioError(f"{path} is not valid YAML: {e}") from None
    data = {} if data is None else data
    problems = _check_scenario(data) if isinstance(data, dict) else ["it must be a mapping"]
    if problems:
        raise ScenarioError(f"{path}: " + "; ".join(problems))
    return Scenario(data)

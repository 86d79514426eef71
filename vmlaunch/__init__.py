"""Azure VM Launch Manager: launch fleets of Azure VMs, report every change over NATS, keep
the deployment's YAML state file true. One sub-package per layer; layers import downward only
(docs/architecture.md has the picture)."""

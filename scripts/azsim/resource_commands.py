"""Commands on the side resources (public IPs, NICs, disks) and on the group and account."""

from __future__ import annotations

from .context import Ctx, target
from .errors import NO_TTY, AzError, http_error, nic_reserved_message, not_found
from .resources import (
    ARM,
    SUBSCRIPTION,
    attached_nic,
    disk_id,
    disk_resource,
    net_id,
    nic_resource,
    public_ip_resource,
    vm_id,
)
from .state import find, nic_reserved

ARM_TYPES = {"public_ips": "Microsoft.Network/publicIPAddresses",
             "nics": "Microsoft.Network/networkInterfaces", "disks": "Microsoft.Compute/disks"}


def _render(st: dict, kind: str, item: dict, t: float) -> dict:
    if kind == "public_ips":
        return public_ip_resource(st, item, t)
    return nic_resource(st, item) if kind == "nics" else disk_resource(item)


def lister(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg = a["resource_group"]
        if rg:
            ctx.require_rg(rg)
        st, t = ctx.view()
        items = sorted(st[kind].values(), key=lambda item: item["name"].lower())
        return [_render(st, kind, item, t) for item in items
                if not rg or item["resource_group"].lower() == rg.lower()]
    return handler


def shower(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg, name = target(a)
        ctx.require_rg(rg)
        st, t = ctx.view()
        item = find(st, kind, rg, name)
        if item is None:
            raise not_found(ARM_TYPES[kind], rg, name)
        return _render(st, kind, item, t)
    return handler


def deleter(kind: str):
    def handler(ctx: Ctx, a: dict):
        rg, name = target(a)
        if kind == "disks" and not a["yes"]:
            ctx.warn(NO_TTY)
            raise AzError("ERROR: Operation cancelled.")
        ctx.require_rg(rg)
        with ctx.tx() as (st, t):
            item = find(st, kind, rg, name)
            if item is not None:
                _check_deletable(ctx, st, kind, item, t)
                del st[kind][name]
        return None
    return handler


def _check_deletable(ctx: Ctx, st: dict, kind: str, item: dict, t: float) -> None:
    rg = item["resource_group"]
    own_id = (disk_id(rg, item["name"]) if kind == "disks"
              else net_id(rg, ARM_TYPES[kind].split("/")[1], item["name"]))
    if kind == "public_ips" and (nic := attached_nic(st, item)) is not None:
        conf = f"{net_id(rg, 'networkInterfaces', nic['name'])}/ipConfigurations/{nic['ipconfig']}"
        raise http_error("PublicIPAddressCannotBeDeleted", f"Public IP address {own_id} can not "
                         f"be deleted since it is still allocated to resource {conf}. In order to "
                         "delete the public IP, disassociate/detach the Public IP address from "
                         "the resource.  To learn how to do this, see aka.ms/deletepublicip.")
    if kind == "nics" and item["vm"]:
        raise http_error("NicInUse", f"Network Interface {own_id} is used by existing resource "
                         f"{vm_id(rg, item['vm'])}. In order to delete the network interface, "
                         "it must be dissociated from the resource. To learn more, see "
                         "aka.ms/deletenic.")
    if kind == "nics" and nic_reserved(item, t):
        raise http_error("NicReservedForAnotherVm",
                         nic_reserved_message(item, ctx.scn.nic_reservation_raw))
    if kind == "disks" and item["vm"]:
        raise http_error("OperationNotAllowed", f"Disk {item['name']} is attached to VM "
                         f"{vm_id(rg.upper(), item['vm'])}.")


def cmd_group_show(ctx: Ctx, a: dict):
    rg = a["name"]
    ctx.require_rg(rg)
    return {"id": f"{ARM}/{rg}", "location": ctx.scn.location, "managedBy": None, "name": rg,
            "properties": {"provisioningState": "Succeeded"}, "tags": None,
            "type": "Microsoft.Resources/resourceGroups"}


def cmd_account_show(ctx: Ctx, a: dict):
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    return {"environmentName": "AzureCloud", "homeTenantId": tenant, "id": SUBSCRIPTION,
            "isDefault": True, "managedByTenants": [], "name": "example-subscription",
            "state": "Enabled", "tenantDefaultDomain": "contoso.onmicrosoft.com",
            "tenantDisplayName": "Contoso", "tenantId": tenant,
            "user": {"name": "ci@contoso.com", "type": "user"}}


def cmd_version(ctx: Ctx, a: dict):
    return {"azure-cli": "2.91.0", "azure-cli-core": "2.91.0", "azure-cli-telemetry": "1.1.0",
            "extensions": {}}

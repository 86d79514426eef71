"""ARM resource shapes of the az simulator: ids, and records rendered as azure-cli prints them."""

from __future__ import annotations

import os
from datetime import UTC, datetime

from .state import find, ips_visible, power_state, provisioning_state

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-111122223333"
ARM = f"/subscriptions/{SUBSCRIPTION}/resourceGroups"


def random_hex() -> str:
    return os.urandom(16).hex()


def guid(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


IMAGE_ALIASES = {
    "ubuntu2204": ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2", "latest"),
    "ubuntu2404": ("Canonical", "ubuntu-24_04-lts", "server", "latest"),
    "debian11": ("Debian", "debian-11", "11-backports-gen2", "latest"),
    "debian12": ("Debian", "debian-12", "12-gen2", "latest"),
}
EXACT_VERSIONS = {"0001-com-ubuntu-server-jammy": "22.04.202501010"}


def vm_id(rg: str, name: str) -> str:
    return f"{ARM}/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"


def net_id(rg: str, kind: str, name: str) -> str:
    return f"{ARM}/{rg}/providers/Microsoft.Network/{kind}/{name}"


def disk_id(rg: str, name: str) -> str:
    # ARM returns disk ids (and managedBy) with the resource group upper-cased.
    return f"{ARM}/{rg.upper()}/providers/Microsoft.Compute/disks/{name}"


def image_reference(image: str) -> dict:
    parts = IMAGE_ALIASES.get(image.lower()) or tuple(image.split(":"))
    if len(parts) != 4:
        return {"id": image}
    publisher, offer, sku, version = parts
    exact = version if version != "latest" else EXACT_VERSIONS.get(offer, "1.0.20250101")
    return {"exactVersion": exact, "offer": offer, "publisher": publisher, "sku": sku,
            "version": version}


def _os_profile(vm: dict) -> dict:
    linux = {"disablePasswordAuthentication": vm["auth_type"] != "password",
             "patchSettings": {"assessmentMode": "ImageDefault", "patchMode": "ImageDefault"},
             "provisionVMAgent": True}
    if vm["ssh_keys"]:
        path = f"/home/{vm['admin_username']}/.ssh/authorized_keys"
        linux["ssh"] = {"publicKeys": [{"keyData": k, "path": path} for k in vm["ssh_keys"]]}
    return {"adminUsername": vm["admin_username"], "allowExtensionOperations": True,
            "computerName": vm["computer_name"] or vm["name"], "linuxConfiguration": linux,
            "requireGuestProvisionSignal": True, "secrets": []}


def _storage_profile(vm: dict) -> dict:
    rg = vm["resource_group"]
    os_disk = {"caching": "ReadWrite", "createOption": "FromImage",
               "deleteOption": vm["os_disk_delete_option"] or "Detach",
               "diskSizeGB": vm["os_disk_size_gb"] or 30,
               "managedDisk": {"id": disk_id(rg, vm["os_disk"]), "resourceGroup": rg.upper(),
                               "storageAccountType": vm["storage_sku"] or "Premium_LRS"},
               "name": vm["os_disk"], "osType": "Linux"}
    return {"dataDisks": [], "diskControllerType": "SCSI",
            "imageReference": image_reference(vm["image"]), "osDisk": os_disk}


def vm_resource(vm: dict, now: float, *, details: bool = False) -> dict:
    """The VM as `vm show` prints it; keys ARM does not return are omitted, not null. Each
    mapping with an id has the resourceGroup that azure-cli's walk (output.py) would add to
    it, so that a listing of many VMs may skip that walk (`WithResourceGroups`)."""
    rg, name = vm["resource_group"], vm["name"]
    nic_ref = {"id": net_id(rg, "networkInterfaces", vm["nic"]), "resourceGroup": rg}
    if vm["nic_delete_option"]:
        nic_ref["deleteOption"] = vm["nic_delete_option"]
    res = {"hardwareProfile": {"vmSize": vm["size"]}, "id": vm_id(rg, name),
           "location": vm["location"], "name": name,
           "networkProfile": {"networkInterfaces": [nic_ref]}, "osProfile": _os_profile(vm),
           "provisioningState": provisioning_state(vm, now), "resourceGroup": rg,
           "securityProfile": {"securityType": "TrustedLaunch",
                               "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True}},
           "storageProfile": _storage_profile(vm), "timeCreated": iso(vm["time_created"]),
           "type": "Microsoft.Compute/virtualMachines", "vmId": guid(vm["vm_hex"])}
    if vm["priority"]:
        res["priority"] = vm["priority"]
    if vm["priority"] in ("Spot", "Low"):
        res["evictionPolicy"] = vm["eviction_policy"] or "Deallocate"
        price = vm["max_price"]
        res["billingProfile"] = {"maxPrice": -1.0 if price is None else price}
    if vm["tags"]:
        res["tags"] = vm["tags"]
    if vm["zone"]:
        res["zones"] = [vm["zone"]]
    if details:
        visible = ips_visible(vm, now)
        res.update(fqdns="", macAddresses=vm["mac"] if visible else "",
                   powerState=power_state(vm, now),
                   privateIps=vm["private_ip"] if visible else "",
                   publicIps=(vm["public_ip"] or "") if visible else "")
    return res


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def create_output(vm: dict) -> dict:
    out = {"fqdns": "", "id": vm_id(vm["resource_group"], vm["name"]),
           "location": vm["location"], "macAddress": vm["mac"], "powerState": "VM running",
           "privateIpAddress": vm["private_ip"], "publicIpAddress": vm["public_ip"] or ""}
    if vm["zone"]:
        out["zones"] = vm["zone"]
    return out


def nic_resource(state: dict, nic: dict) -> dict:
    rg, name = nic["resource_group"], nic["name"]
    nid = net_id(rg, "networkInterfaces", name)
    ipconf = {"id": f"{nid}/ipConfigurations/{nic['ipconfig']}", "name": nic["ipconfig"],
              "primary": True, "privateIPAddress": nic["private_ip"],
              "privateIPAddressVersion": "IPv4", "privateIPAllocationMethod": "Dynamic",
              "provisioningState": "Succeeded",
              "subnet": {"id": net_id(rg, "virtualNetworks", f"{nic['vnet']}/subnets/"
                                      f"{nic['subnet']}")},
              "type": "Microsoft.Network/networkInterfaces/ipConfigurations"}
    if nic["public_ip"] and find(state, "public_ips", rg, nic["public_ip"]):
        ipconf["publicIPAddress"] = {"id": net_id(rg, "publicIPAddresses", nic["public_ip"])}
    res = {"enableAcceleratedNetworking": nic["accelerated"], "enableIPForwarding": False,
           "id": nid, "ipConfigurations": [ipconf], "location": nic["location"],
           "macAddress": nic["mac"], "name": name, "nicType": "Standard",
           "provisioningState": "Succeeded", "type": "Microsoft.Network/networkInterfaces"}
    if nic["vm"]:
        res["virtualMachine"] = {"id": vm_id(rg, nic["vm"])}
    return res


def attached_nic(state: dict, pip: dict) -> dict | None:
    nic = find(state, "nics", pip["resource_group"], pip.get("nic") or "")
    return nic if nic is not None and nic["public_ip"] == pip["name"] else None


def _in_use(state: dict, nic: dict | None, now: float) -> bool:
    """Whether a Basic (dynamic) address exists: only while its VM uses it. A Standard one
    is static, and its VM is not read (a listing of 500 spares as many VM records)."""
    vm = state["vms"].get(nic["vm"]) if nic and nic["vm"] else None
    return vm is not None and ips_visible(vm, now)


def public_ip_resource(state: dict, pip: dict, now: float) -> dict:
    rg = pip["resource_group"]
    standard = pip["sku"] == "Standard"
    res = {"id": net_id(rg, "publicIPAddresses", pip["name"]), "idleTimeoutInMinutes": 4,
           "ipTags": [], "location": pip["location"], "name": pip["name"],
           "provisioningState": "Succeeded", "publicIPAddressVersion": "IPv4",
           "publicIPAllocationMethod": "Static" if standard else "Dynamic",
           "sku": {"name": pip["sku"], "tier": "Regional"},
           "type": "Microsoft.Network/publicIPAddresses"}
    nic = attached_nic(state, pip)
    if standard or _in_use(state, nic, now):
        res["ipAddress"] = pip["address"]
    if nic is not None:
        nid = net_id(rg, "networkInterfaces", nic["name"])
        res["ipConfiguration"] = {"id": f"{nid}/ipConfigurations/{nic['ipconfig']}"}
    if pip["zone"] and standard:
        res["zones"] = [pip["zone"]]
    return res


def disk_resource(disk: dict) -> dict:
    rg = disk["resource_group"]
    res = {"diskSizeGB": disk["size_gb"], "diskState": "Attached" if disk["vm"] else "Unattached",
           "id": disk_id(rg, disk["name"]), "location": disk["location"], "name": disk["name"],
           "osType": "Linux", "provisioningState": "Succeeded",
           "sku": {"name": disk["sku"], "tier": disk["sku"].split("_")[0]},
           "timeCreated": iso(disk["time_created"]), "type": "Microsoft.Compute/disks"}
    if disk["vm"]:
        res["managedBy"] = f"{ARM}/{rg.upper()}/providers/Microsoft.Compute/virtualMachines/" \
                           f"{disk['vm']}"
    if disk["zone"]:
        res["zones"] = [disk["zone"]]
    return res

"""A third-party client (proxmoxer, https backend) drives rigger's Proxmox simulator.

Usage: proxmox_proxmoxer.py HOST PORT TOKEN_SECRET PASSWORD CA_FILE
Creates, inspects and deletes a container with an API token, then with a
password ticket (CSRF token on writes). Prints "ok" on success.
"""
import sys
import time

from proxmoxer import ProxmoxAPI

host, port, secret, password, ca_file = sys.argv[1:6]
TEMPLATE = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst"


def wait(px, node, upid):
    for _ in range(600):
        status = px.nodes(node).tasks(upid).status.get()
        if status["status"] == "stopped":
            assert status["exitstatus"] == "OK", status
            return
        time.sleep(0.05)
    raise AssertionError(f"task {upid} did not finish")


def wait_running(px, node, vmid):
    for _ in range(600):
        if px.nodes(node).lxc(vmid).status.current.get()["status"] == "running":
            return
        time.sleep(0.05)
    raise AssertionError(f"CT {vmid} did not start")


def round_trip(px, vmid, hostname):
    node = px.nodes.get()[0]["node"]
    upid = px.nodes(node).lxc.create(
        vmid=vmid,
        ostemplate=TEMPLATE,
        hostname=hostname,
        memory=256,
        rootfs="local-lvm:2",
        net0="name=eth0,bridge=vmbr0,ip=192.168.50.99/24,gw=192.168.50.1",
        tags="Py;rigger",
        start=1,
    )
    assert upid.startswith(f"UPID:{node}:"), upid
    wait(px, node, upid)
    wait_running(px, node, vmid)
    config = px.nodes(node).lxc(vmid).config.get()
    assert "hwaddr=" in config["net0"] and config["net0"].endswith("type=veth"), config
    assert config["tags"] == "py;rigger", config
    assert config["rootfs"] == f"local-lvm:vm-{vmid}-disk-0,size=2G", config
    wait(px, node, px.nodes(node).lxc(vmid).status.stop.post())
    wait(px, node, px.nodes(node).lxc(vmid).delete(purge=1))
    left = [vm["vmid"] for vm in px.cluster.resources.get(type="vm")]
    assert vmid not in left, left


token = ProxmoxAPI(host, port=int(port), user="root@pam", token_name="rigger", token_value=secret,
                   verify_ssl=ca_file, backend="https", timeout=30)
round_trip(token, 150, "py-token")

ticket = ProxmoxAPI(host, port=int(port), user="root@pam", password=password,
                    verify_ssl=ca_file, backend="https", timeout=30)
round_trip(ticket, 151, "py-ticket")
print("ok")

# pyinfra inventory built from rigger's own: `rigger inventory --format json`
# (Ansible's dynamic-inventory document) for the addresses, ssh user, key and
# known_hosts; the bench's manifest names the hosts rigger configures.
# Env: BENCH_RIGGER_INVENTORY (inventory.json), BENCH_MANIFEST (manifest.json).
import json
import os
import shlex

_inv = json.load(open(os.environ["BENCH_RIGGER_INVENTORY"]))
_manifest = json.load(open(os.environ["BENCH_MANIFEST"]))
_all = _inv["all"]["vars"]


def _known_hosts(common_args):
    for arg in shlex.split(common_args):
        if arg.startswith("UserKnownHostsFile="):
            return arg.split("=", 1)[1]
    raise SystemExit("no UserKnownHostsFile in rigger's ansible_ssh_common_args")


managed = [
    (
        name,
        {
            "ssh_hostname": _inv["_meta"]["hostvars"][name]["ansible_host"],
            "ssh_user": _all["ansible_user"],
            "ssh_key": _all["ansible_ssh_private_key_file"],
            "ssh_known_hosts_file": _known_hosts(_all["ansible_ssh_common_args"]),
            "ssh_strict_host_key_checking": "yes",
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        },
    )
    for name in _manifest["bench_hosts"]
]

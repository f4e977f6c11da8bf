# The no-change config job of `rigger apply`, done by pyinfra: the same files
# (rendered by rigger's own renderer, see config_noop.rs) with the same owners
# and modes, a restart/reload of a service only when one of its files changed,
# the services running and enabled, the distro's PostgreSQL stopped and disabled.
#
#   BENCH_MANIFEST=manifest.json BENCH_RIGGER_INVENTORY=inventory.json \
#     pyinfra -y --parallel 9 inventory.py deploy.py
import json
import os

from pyinfra import host
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

# Operations in these loops take per-host arguments: pyinfra runs the n-th
# call of each line as one operation across the hosts that have it.
me = json.load(open(os.environ["BENCH_MANIFEST"]))["bench_hosts"][host.name]

changed = {}
for f in me["files"]:
    # A rendered file that itself contains Jinja markers (none today) is put as is.
    push = files.put if f["raw"] else files.template
    changed[f["dest"]] = push(
        name="config file",
        src=f["src"],
        dest=f["dest"],
        user=f["owner"],
        group=f["group"],
        mode=f["mode"],
        _sudo=True,
    )

for n in me["notify"]:
    systemd.service(
        name="restart/reload a service when its files changed",
        service=n["service"],
        restarted=n["on_change"] == "restarted",
        reloaded=n["on_change"] == "reloaded",
        _sudo=True,
        _if=any_changed(*(changed[d] for d in n["files"])),
    )

for s in me["services"]:
    systemd.service(name="service running and enabled", service=s, running=True, enabled=True, _sudo=True)

for s in me["stop_disable"]:
    systemd.service(name="service stopped and disabled", service=s, running=False, enabled=False, _sudo=True)

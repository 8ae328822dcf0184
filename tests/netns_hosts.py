"""Two network hosts on one machine: network namespaces joined by a veth pair, with names the test controls.

Each host is a namespace ``ftmn<pid>-<i>`` (the prefix marks them as this harness's; the pid says whose) with
its loopback up, one end of a veth pair named ``eth0`` at ``10.213.<pid % 250>.<i + 1>/24``, and an
``/etc/hosts`` of its own (``ip netns exec`` binds ``/etc/netns/<namespace>/hosts`` over ``/etc/hosts``) that
maps ``node0`` and ``node1`` to those addresses. Commands run in a host through ``ip netns exec`` and a UTS
namespace whose hostname is the host's name, so ``socket.gethostname()`` answers ``node0`` or ``node1`` there,
as on two machines. Nothing routes out of the namespaces: the veth pair is their only link.

:func:`two_hosts` tears everything down when its block ends, whatever ends it (the processes still running in the
hosts included); :func:`remove_stale` removes the namespaces of a run that was killed before it could (their
pid is gone).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "ftmn"
NETNS_ETC = Path("/etc/netns")
_OURS = re.compile(rf"^{PREFIX}(\d+)-\d+$")


@dataclass(frozen=True)
class Host:
    name: str  # its hostname, also the name /etc/hosts maps to its address inside every host
    namespace: str
    address: str

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host: its network namespace, /etc/hosts and hostname."""
        enter_uts = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name]
        return ["ip", "netns", "exec", self.namespace, *enter_uts, *argv]


def unavailable() -> str | None:
    """Why namespaced hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "unshare", "hostname") if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (iproute2, util-linux, hostname)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _delete(namespace: str) -> None:
    """End what still runs inside ``namespace`` (only this harness starts processes there), then remove it."""
    for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "delete", namespace, check=False)  # takes its end of the veth pair, and so the pair, with it
    shutil.rmtree(NETNS_ETC / namespace, ignore_errors=True)


def remove_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; returns their names."""
    listed = _ip("netns", "list", check=False).stdout.split()
    names = {*listed, *(path.name for path in NETNS_ETC.glob(f"{PREFIX}*"))}
    stale = [name for name in names if (m := _OURS.match(name)) and not Path(f"/proc/{m[1]}").exists()]
    for name in stale:
        _delete(name)
    return stale


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Create node0 and node1, yield them, and delete them (also on an exception or KeyboardInterrupt)."""
    pid = os.getpid()
    subnet = f"10.213.{pid % 250}"
    hosts = tuple(Host(f"node{i}", f"{PREFIX}{pid}-{i}", f"{subnet}.{i + 1}") for i in range(2))
    try:
        for host in hosts:
            _ip("netns", "add", host.namespace)
        first, second = hosts
        _ip("link", "add", "eth0", "netns", first.namespace, "type", "veth", "peer", "eth0", "netns", second.namespace)
        etc_hosts = "127.0.0.1 localhost\n" + "".join(f"{host.address} {host.name}\n" for host in hosts)
        for host in hosts:
            _ip("-n", host.namespace, "link", "set", "lo", "up")
            _ip("-n", host.namespace, "address", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")
            (NETNS_ETC / host.namespace).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host.namespace / "hosts").write_text(etc_hosts)
        yield hosts  # type: ignore[misc]
    finally:
        for host in hosts:
            _delete(host.namespace)


def set_link(host: Host, up: bool) -> None:
    """Bring ``host``'s end of the link between the hosts up or down."""
    _ip("-n", host.namespace, "link", "set", "eth0", "up" if up else "down")


def write_launcher(path: Path, hosts: tuple[Host, ...]) -> Path:
    """An ``ssh`` stand-in for MPI's Hydra (``-launcher ssh -launcher-exec PATH``) that enters the host instead.

    Hydra runs ``PATH -x HOST WORDS...`` (Intel MPI's: ``PATH -q -x HOST WORDS...``) as it would run ssh, the
    words a command line quoted for the remote shell; the stand-in gives them to ``sh`` inside HOST.
    """
    cases = "".join(f"  {host.name}) namespace={host.namespace} ;;\n" for host in hosts)
    path.write_text(
        "#!/bin/sh\n"
        'while [ "${1#-}" != "$1" ]; do shift; done\n'  # ssh's options: -x (MPICH), -q -x (Intel MPI)
        'host="$1"; shift\n'
        f'case "$host" in\n{cases}  *) echo "no such namespaced host: $host" >&2; exit 255 ;;\nesac\n'
        'exec ip netns exec "$namespace" unshare --uts sh -c \'hostname "$0" && eval "exec $*"\' "$host" "$@"\n'
    )
    path.chmod(0o755)
    return path

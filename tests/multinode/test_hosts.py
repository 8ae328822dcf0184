"""The two-host harness itself: separate hosts with their own names and addresses, and nothing left behind."""

from __future__ import annotations

import subprocess
import sys

import netns_hosts
import pytest
from launching import run_on

pytestmark = pytest.mark.multinode

REACH = "import socket, sys; socket.create_connection((sys.argv[1], 22222), 5).sendall(socket.gethostname().encode())"
SERVE = (
    "import socket, sys; s = socket.create_server((sys.argv[1], 22222)); print('listening', flush=True); "
    "c, _ = s.accept(); print(socket.gethostname(), 'got', c.recv(64).decode(), 'from', _[0])"
)


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_two_hosts_reach_each_other_by_name_and_are_gone_afterwards(two_hosts):
    node0, node1 = two_hosts
    server = subprocess.Popen(
        node1.command([sys.executable, "-c", SERVE, node1.address]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline() == "listening\n"
        client = run_on(node0, [sys.executable, "-c", REACH, "node1"], timeout=30)  # node1 resolved by node0
        assert client.returncode == 0, client.stderr
        assert server.wait(timeout=30) == 0
        assert server.stdout.read() == f"node1 got node0 from {node0.address}\n"
    finally:
        server.kill()
    loopback = run_on(node1, ["ip", "-br", "link", "show", "lo"], timeout=30).stdout
    assert "UP" in loopback or "UNKNOWN" in loopback  # a loopback that is up reports UNKNOWN
    assert run_on(node0, ["sh", "-c", "hostname; ip -4 -br address show eth0"], timeout=30).stdout.split()[:1] == [
        "node0"
    ]
    assert {node0.namespace, node1.namespace} <= namespaces()


def test_teardown_and_stale_namespaces(tmp_path):
    reason = netns_hosts.unavailable()
    if reason:
        pytest.skip(reason)
    with netns_hosts.two_hosts() as (node0, node1):
        sleeper = subprocess.Popen(node1.command(["sleep", "600"]))
        created = {node0.namespace, node1.namespace}
        assert created <= namespaces()
    assert sleeper.wait(timeout=30) != 0  # ended by the teardown
    assert not created & namespaces() and not any((netns_hosts.NETNS_ETC / name).exists() for name in created)
    # A killed run's namespace (its pid gone) is removed by the next run; a live run's is left alone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = f"{netns_hosts.PREFIX}{dead.pid}-0", f"{netns_hosts.PREFIX}{1}-0"  # pid 1 is always alive
    for name in (stale, live):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert stale in netns_hosts.remove_stale()
        assert stale not in namespaces() and live in namespaces()
    finally:
        for name in (stale, live):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

"""Helpers for the server children (mock upstream and gateways): pin, bind, announce.

A server child binds 127.0.0.1 port 0 itself and prints ``PORT <n>`` on stdout once it
accepts connections; the parent waits for that line (see ``processes.py``). A child that cannot
run (say, the gateway is not importable) prints ``UNAVAILABLE <reason>`` and exits instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

PORT_LINE = "PORT"
UNAVAILABLE_LINE = "UNAVAILABLE"


def server_arg_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one core")
    return parser


def pin_to_core(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def bind_loopback() -> socket.socket:
    """A listening socket on a free loopback port (port 0: the kernel picks one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def announce_port(sock: socket.socket) -> None:
    print(f"{PORT_LINE} {sock.getsockname()[1]}", flush=True)


def announce_unavailable(reason: str) -> None:
    print(f"{UNAVAILABLE_LINE} {' '.join(reason.split())}", flush=True)
    sys.exit(3)

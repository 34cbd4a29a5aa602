"""A Redis server in pure Python (fakeredis, Lua by lupa), for machines without ``redis-server``.

Run as ``python -m tests.fake_redis_server PORT``: it serves 127.0.0.1:PORT until killed. The
Redis tests start it in a process of its own, as they start ``redis-server``, so it can be
stopped, paused and restarted (empty) the same way, and shared by several processes.
"""

from __future__ import annotations

import sys

from fakeredis import TcpFakeServer


class _Server(TcpFakeServer):
    # socketserver's listen backlog is 5: a burst of the store's pooled connections would wait
    # out their connect timeout, which the tests would read as an outage.
    request_queue_size = 1024
    daemon_threads = True
    # As redis-server does: a restart on the same port must not wait out TIME_WAIT.
    allow_reuse_address = True


def main(argv: list[str]) -> None:
    _Server(("127.0.0.1", int(argv[0]))).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Forward TCP ports from a network namespace's loopback to this machine's (scripts/local_cluster.sh).

    python scripts/netns_forward.py NETNS_PATH PORT [PORT ...]

The local Ray cluster runs in a network namespace that has only a loopback interface (Ray binds every
address and resolves 127.0.0.1 to the machine's address otherwise). Its jobs must still reach a tracking
server on the machine's 127.0.0.1:PORT: this process opens 127.0.0.1:PORT inside the namespace (a socket
belongs to the namespace it was created in), returns to its own, and relays each connection to
127.0.0.1:PORT here. Nothing listens outside loopback on either side. Needs the right to enter the
namespace (root, or the owner of its user namespace). Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _listeners(netns: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1:port inside `netns`; this thread is back in its own namespace after."""
    own = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    home = os.open(own, os.O_RDONLY)
    try:
        _setns(netns)
        sockets = []
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(64)
            sockets.append(listener)
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
    return sockets


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (sink, source):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _relay(client: socket.socket, port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=30)  # this machine's loopback
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)
    client.close()
    upstream.close()


def _serve(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, port), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not all(p.isdigit() for p in argv[1:]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    listeners = _listeners(argv[0], [int(p) for p in argv[1:]])  # before any other thread exists
    threads = [threading.Thread(target=_serve, args=(s,), daemon=True) for s in listeners]
    for thread in threads:
        thread.start()
    print(f"forwarding {', '.join(argv[1:])} from {argv[0]} to 127.0.0.1", flush=True)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Forward TCP ports of this machine's loopback into a network namespace's (scripts/local_cluster.sh).

    python scripts/netns_forward.py outside SOCKET_DIR PORT [PORT ...]   # in the machine's namespace
    python scripts/netns_forward.py inside SOCKET_DIR PORT [PORT ...]    # started inside the namespace

The local Ray cluster runs in a network namespace that has only a loopback interface (Ray binds every
address and turns 127.0.0.1 into the machine's address otherwise). Its jobs must still reach a tracking
server on the machine's 127.0.0.1:PORT. The filesystem is shared across namespaces, so two relays meet at a
Unix socket (SOCKET_DIR/PORT.sock, mode 600): `inside` listens on the namespace's 127.0.0.1:PORT and relays
each connection to the socket; `outside` listens on the socket and relays to the machine's 127.0.0.1:PORT.
Neither needs any privilege beyond entering the namespace (nsenter), so it works for root and for a user
namespace alike. Nothing listens outside loopback on either side. Standard library only.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path


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


def _relay(client: socket.socket, connect) -> None:
    try:
        upstream = connect()
    except OSError:
        client.close()
        return
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)
    client.close()
    upstream.close()


def _serve(listener: socket.socket, connect) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, connect), daemon=True).start()


def _tcp(port: int):
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=30)


def _unix(path: str):
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(path)
        sock.settimeout(None)
        return sock

    return connect


def _listen(side: str, folder: Path, port: int) -> tuple[socket.socket, object]:
    path = folder / f"{port}.sock"
    if side == "outside":  # the socket's end: relays to this machine's loopback
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old)
        listener.listen(64)
        return listener, _tcp(port)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # the namespace's loopback
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return listener, _unix(str(path))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("inside", "outside") or not all(p.isdigit() for p in argv[2:]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    folder = Path(argv[1])
    served = [_listen(argv[0], folder, int(port)) for port in argv[2:]]
    threads = [threading.Thread(target=_serve, args=pair, daemon=True) for pair in served]
    for thread in threads:
        thread.start()
    print(f"forwarding {', '.join(argv[2:])} ({argv[0]})", flush=True)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

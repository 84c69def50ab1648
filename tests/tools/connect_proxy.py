#!/usr/bin/env python3
"""A tiny HTTP CONNECT proxy for tests (stdlib only).

usage: connect_proxy.py PORT-FILE LOG-FILE

Listens on 127.0.0.1 (a free port, written to PORT-FILE once listening),
tunnels each CONNECT HOST:PORT and appends one line "CONNECT HOST:PORT" to
LOG-FILE per tunnel, so a test can count connections.  Anything else gets
405.  Runs until killed.
"""
import os
import socket
import sys
import threading


def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(client, log):
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 8192:
        chunk = client.recv(4096)
        if not chunk:
            client.close()
            return
        head += chunk
    line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(line) != 3 or line[0] != "CONNECT":
        client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        client.close()
        return
    host, _, port = line[1].rpartition(":")
    try:
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        upstream.settimeout(None)
    except (OSError, ValueError):
        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        client.close()
        return
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"CONNECT {line[1]}\n")
    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    rest = head.split(b"\r\n\r\n", 1)[1]
    if rest:
        upstream.sendall(rest)
    threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
    pump(client, upstream)
    client.close()
    upstream.close()


def main():
    port_file, log = sys.argv[1], sys.argv[2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    open(log, "a", encoding="utf-8").close()
    with open(port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(f"{srv.getsockname()[1]}\n")
    os.rename(port_file + ".tmp", port_file)
    while True:
        client, _ = srv.accept()
        threading.Thread(target=serve, args=(client, log), daemon=True).start()


if __name__ == "__main__":
    main()

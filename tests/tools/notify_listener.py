#!/usr/bin/env python3
"""A stand-in for systemd's notification socket (sd_notify(3)), for tests/integration/notify.sh.

usage: notify_listener.py SOCKET HEALTHZ-URL CA-FILE

Binds a datagram socket at SOCKET and prints, for every datagram, a line
"MSG pid=PID " followed by its fields (the sender's pid from SCM_CREDENTIALS).
When a datagram holds READY=1 it asks HEALTHZ-URL at once (TLS, verified
with CA-FILE) and prints "READY pid=PID healthz=STATUS mainpid=MAINPID status=STATUS-TEXT";
STOPPING=1 prints "STOPPING pid=PID ". Exits 0 after STOPPING=1, 1 after 120 s
without it.
"""
import http.client
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse


def healthz(url, cafile):
    u = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=2)
        conn.request("GET", u.path)
        status = conn.getresponse().status
        conn.close()
        return str(status)
    except (OSError, http.client.HTTPException) as e:
        return "none(" + type(e).__name__ + ")"


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    path, url, cafile = argv[1:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind(path)
    s.settimeout(1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            continue
        pid = "?"
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = str(struct.unpack("iII", cdata[:12])[0])
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
        print(f"MSG pid={pid} " + " ".join(f"{k}={v!r}" for k, v in fields.items()), flush=True)
        if fields.get("READY") == "1":
            code = healthz(url, cafile)
            print(f"READY pid={pid} healthz={code} mainpid={fields.get('MAINPID', '')} "
                  f"status={fields.get('STATUS', '')}", flush=True)
        if fields.get("STOPPING") == "1":
            print(f"STOPPING pid={pid} ", flush=True)
            os.unlink(path)
            return 0
    print("no STOPPING=1 within 120 s", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

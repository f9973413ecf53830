#!/usr/bin/env python3
"""Records what real RTMP clients send: a TCP proxy between a client and a
running sluice that writes each connection's client->server bytes to
OUT_DIR/<n>.bin. Used once to make the seed corpus (see README.md).

usage: capture.py LISTEN_PORT SERVER_PORT OUT_DIR SECONDS
"""
import os, socket, sys, threading, time

listen_port, server_port, out_dir, seconds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
os.makedirs(out_dir, exist_ok=True)
counter = [0]

def pump(src, dst, record):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            if record is not None:
                record.write(b)
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def handle(client):
    counter[0] += 1
    n = counter[0]
    server = socket.create_connection(("127.0.0.1", server_port))
    with open(os.path.join(out_dir, f"{n}.bin"), "wb") as rec:
        t = threading.Thread(target=pump, args=(server, client, None), daemon=True)
        t.start()
        pump(client, server, rec)
        t.join(2)

ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", listen_port))
ls.listen(16)
ls.settimeout(0.5)
end = time.time() + seconds
while time.time() < end:
    try:
        c, _ = ls.accept()
    except socket.timeout:
        continue
    threading.Thread(target=handle, args=(c,), daemon=True).start()
time.sleep(1)

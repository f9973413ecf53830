#!/usr/bin/env python3
"""Records what an RTMP client sends to a server: a TCP proxy on LISTEN that
forwards to TARGET and writes the client-to-server bytes to OUT.

How tests/data/ffmpeg_publish.bin was made (ffmpeg 5.1, Debian):
  target/debug/sluice --rtmp 127.0.0.1:19350 --workers 1 &
  python3 tests/data/capture_publish.py 127.0.0.1:19351 127.0.0.1:19350 tests/data/ffmpeg_publish.bin &
  ffmpeg -f lavfi -i testsrc2=size=320x180:rate=30 -f lavfi -i sine=sample_rate=44100 \
         -t 2 -c:v libx264 -preset ultrafast -g 30 -b:v 200k -c:a aac -b:a 64k \
         -f flv rtmp://127.0.0.1:19351/live/rec
"""
import socket
import sys
import threading


def pump(src, dst, record):
    while True:
        data = src.recv(65536)
        if not data:
            break
        if record is not None:
            record.write(data)
        dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
    host, port = listen.rsplit(":", 1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(1)
    client, _ = srv.accept()
    thost, tport = target.rsplit(":", 1)
    upstream = socket.create_connection((thost, int(tport)))
    with open(out, "wb") as record:
        back = threading.Thread(target=pump, args=(upstream, client, None))
        back.start()
        pump(client, upstream, record)
        back.join(timeout=5)


if __name__ == "__main__":
    main()

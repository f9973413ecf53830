#!/usr/bin/env python3
"""Turns an FLV file into a seed for the cmaf_packager fuzz target: one
record per tag, [kind][timestamp delta u16 LE][length u16 LE][tag body]
(kind 0 audio, 1 video, 2 script data), then a finish record and a few
request lines. Tags over 65,535 bytes are cut (the target's record limit).

usage: cmaf_seed.py IN.flv OUT
"""
import struct, sys

data = open(sys.argv[1], "rb").read()
assert data[:3] == b"FLV", "not an FLV file"
at = struct.unpack(">I", data[5:9])[0] + 4  # header, then PreviousTagSize0
out = bytearray()
last = 0
kinds = {8: 0, 9: 1, 18: 2}
while at + 11 <= len(data):
    tag_type = data[at] & 0x1F
    size = int.from_bytes(data[at + 1:at + 4], "big")
    ts = int.from_bytes(data[at + 4:at + 7], "big") | (data[at + 7] << 24)
    body = data[at + 11:at + 11 + size]
    at += 11 + size + 4
    if tag_type not in kinds:
        continue
    body = body[:65535]
    delta = max(0, min(ts - last, 65535))
    last = ts
    out += bytes([kinds[tag_type]]) + struct.pack("<HH", delta, len(body)) + body
out += bytes([3, 0, 0, 0, 0])
out += b"v0.m3u8\nv0.m3u8?_HLS_msn=1&_HLS_part=0\nv0.m3u8?_HLS_skip=YES\nindex.m3u8\na0/init-0.mp4\nv0/s0.m4s\nv0/p2.m4s\n"
open(sys.argv[2], "wb").write(out)

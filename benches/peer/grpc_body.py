"""Writes a gRPC-framed request body for h2load: Route with one user message, or an empty
Health/Check. Hand-encoded protobuf (two strings in one embedded message) so no grpc tools are
needed. Usage: grpc_body.py route|health OUT [PROMPT]"""
import struct
import sys


def field(num, payload):
    # Length-delimited field; varint length (prompts here are < 2**14 bytes).
    n = len(payload)
    length = bytes([n]) if n < 128 else bytes([(n & 0x7F) | 0x80, n >> 7])
    return bytes([(num << 3) | 2]) + length + payload


kind, out = sys.argv[1], sys.argv[2]
prompt = sys.argv[3] if len(sys.argv) > 3 else (
    "A train leaves the station at 3pm travelling at 60 km/h; a second train leaves the same "
    "station an hour later at 90 km/h. When does the second train catch up?")
if kind == "route":
    msg = field(1, b"user") + field(2, prompt.encode())
    body = field(1, msg)
else:
    body = b""
with open(out, "wb") as f:
    f.write(b"\x00" + struct.pack(">I", len(body)) + body)

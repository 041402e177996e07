"""MQTT packets built as bytes (3.1.1 and 5), for the paths that send many at once in one write."""

from __future__ import annotations

PUBLISH = 0x30
PUBACK = 0x40


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    if n < 128:  # most notifications and acknowledgements: these two cases are all but every packet's
        return _ONE_BYTE[n]
    if n < 16384:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def text(s: str) -> bytes:
    """A UTF-8 string as MQTT carries it: two bytes of length, then the bytes."""
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, v5: bool = False, dup: bool = False) -> bytes:
    """A PUBLISH of `payload` to `topic` (already `text`-encoded); `mid` is its packet identifier when `qos` > 0.
    MQTT 5 adds an empty property list."""
    # built for every notification (three an Observation): one join, the fixed parts made once
    length = len(topic) + len(payload) + (2 if qos else 0) + v5
    return b"".join((_HEADS[qos << 1 | dup], remaining_length(length), topic,
                     mid.to_bytes(2, "big") if qos else b"", b"\x00" if v5 else b"", payload))


# the fixed header's first byte by QoS and DUP
_HEADS = {qos << 1 | dup: bytes((PUBLISH | (0x08 if dup else 0) | (qos << 1),)) for qos in (0, 1, 2) for dup in (0, 1)}


def set_dup(packet: bytes) -> bytes:
    """The same PUBLISH marked as sent before (resent after a reconnect)."""
    return bytes([packet[0] | 0x08]) + packet[1:]


def pubacks(mids: list[int]) -> bytes:
    """The QoS 1 acknowledgements of `mids`, one after another (MQTT 5 may omit a success's reason code)."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)

"""MQTT packets built as bytes (3.1.1 and 5), for the paths that send many at once in one write."""

from __future__ import annotations

PUBLISH = 0x30
PUBACK = 0x40


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def text(s: str) -> bytes:
    """A UTF-8 string as MQTT carries it: two bytes of length, then the bytes."""
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, v5: bool = False, dup: bool = False) -> bytes:
    """A PUBLISH of `payload` to `topic` (already `text`-encoded); `mid` is its packet identifier when `qos` > 0.
    MQTT 5 adds an empty property list."""
    head = bytes([PUBLISH | (0x08 if dup else 0) | (qos << 1)])
    ident = mid.to_bytes(2, "big") if qos else b""
    props = b"\x00" if v5 else b""
    return head + remaining_length(len(topic) + len(ident) + len(props) + len(payload)) + topic + ident + props \
        + payload


def set_dup(packet: bytes) -> bytes:
    """The same PUBLISH marked as sent before (resent after a reconnect)."""
    return bytes([packet[0] | 0x08]) + packet[1:]


def pubacks(mids: list[int]) -> bytes:
    """The QoS 1 acknowledgements of `mids`, one after another (MQTT 5 may omit a success's reason code)."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)

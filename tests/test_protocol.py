"""The coordinator↔worker wire (shared/protocol.py): frames, validation, sockets, passed fds."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from leaks import open_fds

from wasmgroup.shared.protocol import (
    MAX_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    ConnectionClosed,
    ProtocolError,
    decode,
    encode,
    encode_op,
    pack_op,
    receive,
    send,
    validate,
)


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() == before, "the test leaked file descriptors"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def body(frame: bytes) -> bytes:
    """The msgpack body of a frame, after checking its length header."""
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


def raw(**message: Any) -> bytes:
    """A msgpack body that `encode` would refuse to make."""
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


# --- encoding and validation -------------------------------------------------------------


ROUND_TRIPS: list[tuple[str, dict[str, Any]]] = [
    ("ready", {"pid": 4242}),
    ("assign", {"thread": 3, "role": "thread",
                "config": {"argv": ["a.wasm", "-x"], "memory": {"max_pages": 17, "shared": True},
                           "blob": b"\x00\xff", 7: None}}),
    ("assigned", {"error": None}),
    ("assigned", {"error": "no such module"}),
    ("run", {"entry": "_start", "args": [1, -2, 3.5, "x"], "thread": 1}),
    ("rearm", {"thread": -3}),
    ("exited", {"how": "exit", "code": -1, "message": None}),
    ("call", {"id": 7, "name": "dlopen", "args": ["libfoo.so", 2]}),
    ("reply", {"id": 7, "ok": True, "value": {"handle": 12}, "error": None}),
    ("reply", {"id": 8, "ok": False, "value": None, "error": "stopped"}),
    ("op", {"id": 1 << 40, "op": {"kind": "load"}, "initialise": False}),
    ("ack", {"id": 9, "error": None, "seconds": 0.25, "state": [[1, 2], "x"], "gone": False}),
    ("purge", {}),
    ("stop", {}),
    ("shutdown", {}),
    ("reset", {}),
    ("clean", {"ok": True, "problem": None}),
    ("clean", {"ok": False, "problem": "descriptors left open: {9: 'pipe:[1]'}"}),
]


@pytest.mark.parametrize(("kind", "fields"), ROUND_TRIPS,
                         ids=[f"{kind}-{i}" for i, (kind, _) in enumerate(ROUND_TRIPS)])
def test_round_trip(kind: str, fields: dict[str, Any]) -> None:
    message = decode(body(encode(kind, **fields)))
    assert message == {"v": PROTOCOL_VERSION, "t": kind, **fields}
    # Types survive too: bytes stay bytes, floats stay floats, bools stay bools.
    for name, value in fields.items():
        assert type(message[name]) is type(value)


def test_round_trips_cover_every_message_type() -> None:
    assert {kind for kind, _ in ROUND_TRIPS} == set(MESSAGES)


def test_encode_validates_like_the_receiver() -> None:
    with pytest.raises(ProtocolError, match=r"message 'ready': field 'pid' must be int, not str"):
        encode("ready", pid="1")
    with pytest.raises(ProtocolError, match=r"unknown message type 'hello'"):
        encode("hello")
    with pytest.raises(ProtocolError, match=r"message 'run' lacks field 'args'"):
        encode("run", entry="_start")


def test_integer_past_64_bits_is_a_protocol_error() -> None:
    # A table base of 2^(2^32-1) from a bad module used to escape as OverflowError (a hang).
    with pytest.raises(ProtocolError, match=r"message 'op' cannot be encoded: Integer value"):
        encode("op", id=1, op={"table_base": 1 << 64}, initialise=False)


@pytest.mark.parametrize("op_id", [1, 200, 1 << 20])
def test_an_operation_packed_once_makes_the_frames_encode_would(op_id: int) -> None:
    op = {"op": "load_modules", "modules": [{"name": "lib.so", "bindings": [[1, "x"]]}],
          **{f"k{i}": i for i in range(20)}}  # past 15 keys: a map16
    for initialise in (False, True):
        frame = encode_op(op_id, pack_op(op), initialise)
        assert frame == encode("op", id=op_id, op=op, initialise=initialise)
        assert decode(body(frame))["op"] == op
    with pytest.raises(ProtocolError, match=r"message 'op': fields 'id' and 'op'"):
        encode_op(1, pack_op([1, 2]), False)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"message 'op' cannot be encoded: Integer value"):
        pack_op({"table_base": 1 << 64})


def test_other_protocol_version() -> None:
    frame = raw(v=PROTOCOL_VERSION + 1, t="ready", pid=1)
    with pytest.raises(ProtocolError,
                       match=rf"frame 'ready' has protocol version {PROTOCOL_VERSION + 1}, "
                             rf"expected {PROTOCOL_VERSION}"):
        decode(frame)


def test_missing_version() -> None:
    with pytest.raises(ProtocolError, match=r"frame 'stop' has protocol version None"):
        decode(raw(t="stop"))


def test_unknown_type() -> None:
    with pytest.raises(ProtocolError, match=r"unknown message type 'launch'"):
        decode(raw(v=PROTOCOL_VERSION, t="launch"))
    with pytest.raises(ProtocolError, match=r"unknown message type None"):
        decode(raw(v=PROTOCOL_VERSION))


def test_missing_field() -> None:
    with pytest.raises(ProtocolError, match=r"message 'exited' lacks field 'code'"):
        decode(raw(v=PROTOCOL_VERSION, t="exited", how="exit", message=None))


@pytest.mark.parametrize(("kind", "fields", "error"), [
    ("ready", {"pid": "12"}, r"message 'ready': field 'pid' must be int, not str"),
    ("ready", {"pid": None}, r"message 'ready': field 'pid' must be int, not NoneType"),
    ("ready", {"pid": 1.0}, r"message 'ready': field 'pid' must be int, not float"),
    ("run", {"entry": "_start", "args": {"a": 1}, "thread": 1},
     r"message 'run': field 'args' must be list, not dict"),
    ("assigned", {"error": 3}, r"message 'assigned': field 'error' must be str or nil, not int"),
    ("ack", {"id": 1, "error": None, "seconds": 1, "state": None, "gone": False},
     r"message 'ack': field 'seconds' must be float, not int"),
    ("reply", {"id": 1, "ok": 1, "value": None, "error": None},
     r"message 'reply': field 'ok' must be bool, not int"),
])
def test_field_of_the_wrong_type(kind: str, fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        decode(raw(v=PROTOCOL_VERSION, t=kind, **fields))


@pytest.mark.parametrize(("kind", "fields", "field"), [
    ("ready", {"pid": True}, "pid"),
    ("exited", {"how": "exit", "code": False, "message": None}, "code"),
    ("op", {"id": True, "op": {}, "initialise": False}, "id"),
    ("ack", {"id": 1, "error": None, "seconds": True, "state": None, "gone": False}, "seconds"),
])
def test_bool_is_not_an_int(kind: str, fields: dict[str, Any], field: str) -> None:
    # bool is a subclass of int in Python; the protocol must not take one for the other.
    with pytest.raises(ProtocolError, match=rf"message '{kind}': field '{field}' has a boolean"):
        decode(raw(v=PROTOCOL_VERSION, t=kind, **fields))


def test_bool_where_bool_or_anything_is_wanted() -> None:
    message = decode(body(encode("reply", id=1, ok=False, value=True, error=None)))
    assert message["ok"] is False
    assert message["value"] is True


def test_unexpected_extra_field() -> None:
    with pytest.raises(ProtocolError, match=r"message 'stop' has unexpected fields \['force'\]"):
        decode(raw(v=PROTOCOL_VERSION, t="stop", force=True))
    with pytest.raises(ProtocolError,
                       match=r"message 'ready' has unexpected fields \['host', 'port'\]"):
        decode(raw(v=PROTOCOL_VERSION, t="ready", pid=1, port=2, host="x"))


@pytest.mark.parametrize("data", [
    b"\xc1",  # a byte msgpack never uses
    b"",  # nothing at all
    b"\x82\xa1v",  # a map cut short
    raw(v=PROTOCOL_VERSION, t="stop") + b"\x00",  # trailing bytes after the map
], ids=["reserved-byte", "empty", "truncated", "trailing"])
def test_not_msgpack(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=rf"a frame of {len(data)} bytes is not msgpack"):
        decode(data)


@pytest.mark.parametrize(("value", "name"), [([1, 2], "list"), (7, "int"), ("stop", "str"),
                                             (None, "NoneType")])
def test_frame_that_is_not_a_map(value: object, name: str) -> None:
    with pytest.raises(ProtocolError, match=rf"a frame must be a map, not {name}"):
        decode(msgpack.packb(value))
    with pytest.raises(ProtocolError, match=rf"a frame must be a map, not {name}"):
        validate(value)


def test_unhashable_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(raw(v=PROTOCOL_VERSION, t=["ready"]))


def test_unhashable_map_key_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(b"\x81\x80\x01")  # {{}: 1}


# --- frames over a socket ----------------------------------------------------------------


def test_receive_frames_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    send(left, encode("ready", pid=77))
    send(left, encode("run", entry="main", args=["x" * 1000], thread=1))
    send(left, encode("stop"))
    assert receive(right) == {"v": PROTOCOL_VERSION, "t": "ready", "pid": 77}
    assert receive(right) == {"v": PROTOCOL_VERSION, "t": "run", "entry": "main",
                              "args": ["x" * 1000], "thread": 1}
    assert receive(right) == {"v": PROTOCOL_VERSION, "t": "stop"}


def test_receive_a_frame_that_arrives_in_pieces(pair: tuple[socket.socket, socket.socket]
                                                ) -> None:
    left, right = pair
    frame = encode("call", id=3, name="spawn", args=[1, 2, 3])
    pieces = [frame[:2], frame[2:5], frame[5:9], frame[9:]]

    def trickle() -> None:
        for piece in pieces:
            time.sleep(0.01)  # the receiver is waiting: each piece arrives on its own
            left.sendall(piece)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        fds: list[int] = []
        assert receive(right, fds) == {"v": PROTOCOL_VERSION, "t": "call", "id": 3,
                                       "name": "spawn", "args": [1, 2, 3]}
        assert fds == []
    finally:
        sender.join(5)


def test_receive_a_frame_larger_than_the_socket_buffer(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    blob = bytes(range(256)) * 8192  # 2 MiB
    frame = encode("assign", thread=1, role="main", config={"blob": blob})
    read, write = os.pipe()
    sender = threading.Thread(target=send, args=(left, frame, [write]))
    sender.start()
    fds: list[int] = []
    try:
        message = receive(right, fds)
    finally:
        sender.join(5)
        for fd in (read, write, *fds):
            os.close(fd)
    assert message["config"]["blob"] == blob
    assert len(fds) == 1


def test_frame_length_above_max_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">I", MAX_FRAME + 1) + b"\x80")
    with pytest.raises(ProtocolError, match=rf"frame length {MAX_FRAME + 1} exceeds {MAX_FRAME}"):
        receive(right)


def test_frame_length_of_max_frame_is_not_refused_for_its_size(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(struct.pack(">I", MAX_FRAME) + b"\x80")
    left.close()
    # Accepted as a length: what fails is the peer closing before the body is complete.
    with pytest.raises(ProtocolError, match=rf"inside a frame \(1 of {MAX_FRAME} bytes\)"):
        receive(right)


def test_peer_closes_between_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    send(left, encode("shutdown"))
    left.close()
    assert receive(right)["t"] == "shutdown"
    with pytest.raises(ConnectionClosed):
        receive(right)
    with pytest.raises(ConnectionClosed):
        receive(right, [])


def test_peer_closes_inside_the_body(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    frame = encode("ready", pid=1)
    left.sendall(frame[:-2])
    left.close()
    size = len(frame) - 4
    with pytest.raises(ProtocolError,
                       match=rf"connection closed inside a frame \({size - 2} of {size} bytes\)"):
        receive(right)


def test_peer_closes_inside_the_header(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(b"\x00\x00")
    left.close()
    with pytest.raises(ProtocolError, match=r"inside a frame \(2 of 4 bytes\)"):
        receive(right, [])


def test_receive_rejects_a_bad_body(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    bad = raw(v=PROTOCOL_VERSION, t="ready", pid="x")
    left.sendall(struct.pack(">I", len(bad)) + bad)
    with pytest.raises(ProtocolError, match=r"message 'ready': field 'pid' must be int"):
        receive(right)


def test_send_to_a_closed_peer(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    right.close()
    with pytest.raises(ConnectionClosed):
        send(left, encode("stop"))
    read, write = os.pipe()
    try:
        with pytest.raises(ConnectionClosed):
            send(left, encode("stop"), fds=[read])
    finally:
        os.close(read)
        os.close(write)


# --- file descriptors alongside a frame --------------------------------------------------


def test_fds_travel_with_the_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    read, write = os.pipe()
    memfd = os.memfd_create("protocol-test", os.MFD_CLOEXEC)
    received: list[int] = []
    try:
        os.write(memfd, b"region")
        send(left, encode("assign", thread=2, role="thread", config={}), fds=[write, memfd])
        send(left, encode("stop"))
        message = receive(right, received)
        assert message["t"] == "assign"
        assert len(received) == 2
        assert not set(received) & {read, write, memfd}  # new descriptors, same files
        # The first refers to the pipe's write end: what goes in comes out of `read`.
        os.write(received[0], b"through the socket")
        assert os.read(read, 100) == b"through the socket"
        # The second refers to the memfd: same file, same contents.
        assert os.fstat(received[1]).st_ino == os.fstat(memfd).st_ino
        assert os.pread(received[1], 6, 0) == b"region"
        # The next frame, sent without fds, brings none.
        more: list[int] = []
        assert receive(right, more)["t"] == "stop"
        assert more == []
    finally:
        for fd in (read, write, memfd, *received):
            os.close(fd)


def test_fds_append_to_the_callers_list(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    read, write = os.pipe()
    received: list[int] = [-1]
    try:
        send(left, encode("stop"), fds=[read])
        receive(right, received)
        assert received[0] == -1
        assert len(received) == 2
        os.write(write, b"x")
        assert os.read(received[1], 1) == b"x"
    finally:
        for fd in (read, write, *received[1:]):
            os.close(fd)


def test_fds_are_dropped_when_the_receiver_takes_none(
        pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    read, write = os.pipe()
    try:
        before = open_fds()
        send(left, encode("stop"), fds=[read, write])
        assert receive(right) == {"v": PROTOCOL_VERSION, "t": "stop"}
        assert open_fds() == before
    finally:
        os.close(read)
        os.close(write)

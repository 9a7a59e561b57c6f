"""The wire between the coordinator and its workers: length-prefixed msgpack frames.

A frame is a 4-byte big-endian length, then a msgpack map with `v` (PROTOCOL_VERSION), `t`
(the message type) and the fields of that type. Both sides validate every frame they read
against `MESSAGES`; a frame that is malformed, of another version, of an unknown type or with
a missing or mistyped field raises `ProtocolError` naming the message, and the job ends.

Messages, by direction (W = worker, C = coordinator):
  W→C ready(pid)                          a started worker, engine created
  C→W assign(thread, role, ...)           host a group: "main" (create memory and table) or
                                          "thread" (attach, replay `plans`/`slots`); fds
                                          travel alongside (the memory's memfd if shared,
                                          the descriptor table's generation memfd)
  W→C assigned(error)                     the group exists (replayed), or why not
  C→W run(entry, args, thread)            call the group's entry point, as wasm thread `thread`
  C→W rearm(thread)                       the group of a thread that exited (returned or
                                          pthread_exit) stays, as standby group `thread`:
                                          its side modules' TLS blocks initialised again;
                                          answered by `assigned`
  W→C exited(how, code, message)          the entry point ended: returned / exit /
                                          thread_exit / trap / stopped / failed /
                                          signal (code: its number, message: its name)
  W→C call(id, name, args)                a LinkService request (dlopen, dlsym, spawn, ...)
  C→W reply(id, ok, value, error)         its answer (the call's id: a request made while
                                          applying an operation at a safe point must not
                                          take the answer to the request that waits there);
                                          `stopped` when the program is ending
  C→W op(id, op, initialise)              apply a link operation (or describe) at a safe point
  W→C ack(id, error, seconds, state, gone)
  C→W purge()                             descriptor table entries changed: close cached
                                          copies of them (replies to descriptor requests
                                          carry an OS descriptor alongside)
  C→W stop()                              the program is ending: leave guest code
  C→W shutdown()                          leave the process
  C→W reset()                             the program is over: drop its group (if any) and
                                          everything else of it, then check what is left
  W→C clean(ok, problem)                  after a reset: nothing of the program is left (ok),
                                          or what is (the coordinator then retires the worker)
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgpack

from wasmgroup.shared.errors import WasmgroupError

PROTOCOL_VERSION = 2  # 2: calls and replies carry an id
MAX_FRAME = 64 << 20  # a frame larger than this is corrupt, not big
MAX_FDS = 8  # descriptors that may travel with one frame
_HEADER = struct.Struct(">I")

_NONE = type(None)
# type -> {field: accepted python types}
MESSAGES: dict[str, dict[str, tuple[type, ...]]] = {
    "ready": {"pid": (int,)},
    "assign": {"thread": (int,), "role": (str,), "config": (dict,)},
    "assigned": {"error": (str, _NONE)},
    "run": {"entry": (str,), "args": (list,), "thread": (int,)},
    "rearm": {"thread": (int,)},
    "exited": {"how": (str,), "code": (int,), "message": (str, _NONE)},
    "call": {"id": (int,), "name": (str,), "args": (list,)},
    "reply": {"id": (int,), "ok": (bool,), "value": (object,), "error": (str, _NONE)},
    "op": {"id": (int,), "op": (dict,), "initialise": (bool,)},
    "ack": {"id": (int,), "error": (str, _NONE), "seconds": (float,), "state": (list, _NONE),
            "gone": (bool,)},
    "purge": {},
    "stop": {},
    "shutdown": {},
    "reset": {},
    "clean": {"ok": (bool,), "problem": (str, _NONE)},
}


class ProtocolError(WasmgroupError):
    """A frame that breaks the protocol (the message names the frame and what is wrong)."""


class ConnectionClosed(WasmgroupError):
    """The other side closed the connection (or died) between frames."""


def encode(kind: str, **fields: Any) -> bytes:
    """One frame, validated as the receiver will validate it."""
    message = {"v": PROTOCOL_VERSION, "t": kind, **fields}
    validate(message)
    try:
        body: bytes = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, ValueError, TypeError) as err:
        # e.g. an integer past 64 bits: refuse the frame by name, as the receiver would.
        raise ProtocolError(f"message {kind!r} cannot be encoded: {err}") from None
    return _HEADER.pack(len(body)) + body


def pack_op(op: dict[str, Any]) -> bytes:
    """A link operation packed once, for `encode_op` to put in each group's frame (a
    broadcast sends the same operation to every group, under a different id)."""
    try:
        return bytes(msgpack.packb(op, use_bin_type=True))
    except (OverflowError, ValueError, TypeError) as err:
        raise ProtocolError(f"message 'op' cannot be encoded: {err}") from None


_OP_HEAD = msgpack.packb({"v": PROTOCOL_VERSION, "t": "op"})[1:]  # the map's first 2 pairs


def encode_op(op_id: int, packed: bytes, initialise: bool) -> bytes:
    """The frame `encode("op", id=op_id, op=..., initialise=initialise)` would make, around
    an operation `pack_op` packed (a map, so the frame is valid as `decode` reads it)."""
    is_map = bool(packed) and (packed[0] & 0xF0 == 0x80 or packed[0] in (0xDE, 0xDF))
    if type(op_id) is not int or not is_map:
        raise ProtocolError("message 'op': fields 'id' and 'op' must be int and dict")
    body = b"".join((b"\x85", _OP_HEAD, msgpack.packb("id"), msgpack.packb(op_id),
                     msgpack.packb("op"), packed, msgpack.packb("initialise"),
                     msgpack.packb(initialise)))
    return _HEADER.pack(len(body)) + body


def validate(message: object) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame must be a map, not {type(message).__name__}")
    kind = message.get("t")
    version = message.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"frame {kind!r} has protocol version {version!r}, "
                            f"expected {PROTOCOL_VERSION}")
    if not isinstance(kind, str) or kind not in MESSAGES:
        raise ProtocolError(f"unknown message type {kind!r}")
    schema = MESSAGES[kind]
    for name, types in schema.items():
        if name not in message:
            raise ProtocolError(f"message {kind!r} lacks field {name!r}")
        value = message[name]
        if isinstance(value, bool) and bool not in types and object not in types:
            raise ProtocolError(f"message {kind!r}: field {name!r} has a boolean")
        if not isinstance(value, types):
            wanted = " or ".join("nil" if t is _NONE else t.__name__ for t in types)
            raise ProtocolError(f"message {kind!r}: field {name!r} must be {wanted}, "
                                f"not {type(value).__name__}")
    extra = set(message) - set(schema) - {"v", "t"}
    if extra:
        raise ProtocolError(f"message {kind!r} has unexpected fields {sorted(extra)}")
    return message


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ProtocolError(f"a frame of {len(body)} bytes is not msgpack: {err}") from None
    return validate(message)


def _recv_exactly(sock: socket.socket, size: int, fds: list[int] | None) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        if fds is not None and not chunks:
            data, received, flags, _addr = socket.recv_fds(sock, size, MAX_FDS)
            fds.extend(received)
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError(f"a frame came with more than {MAX_FDS} descriptors")
        else:
            data = sock.recv(size - len(chunks))
        if not data:
            if chunks:
                raise ProtocolError(f"connection closed inside a frame ({len(chunks)} of "
                                    f"{size} bytes)")
            raise ConnectionClosed("connection closed")
        chunks += data
    return bytes(chunks)


def receive(sock: socket.socket, fds: list[int] | None = None) -> dict[str, Any]:
    """The next frame, validated. File descriptors sent with it are appended to `fds`."""
    try:
        header = _recv_exactly(sock, _HEADER.size, fds)
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ProtocolError(f"frame length {length} exceeds {MAX_FRAME}")
        return decode(_recv_exactly(sock, length, None))
    except (ConnectionResetError, BrokenPipeError) as err:
        raise ConnectionClosed(str(err)) from None


def send(sock: socket.socket, frame: bytes, fds: list[int] | None = None) -> None:
    """Send a frame made by `encode` (callers serialise sends on one socket)."""
    if fds and len(fds) > MAX_FDS:
        raise ProtocolError(f"at most {MAX_FDS} descriptors travel with a frame, not {len(fds)}")
    try:
        if fds:
            sent = socket.send_fds(sock, [frame], fds)
            if sent < len(frame):
                sock.sendall(frame[sent:])
        else:
            sock.sendall(frame)
    except (ConnectionResetError, BrokenPipeError) as err:
        raise ConnectionClosed(str(err)) from None

"""Length-prefixed pickle frames between the grading process and its zygotes (both trusted;
the sandboxed child never writes to these pipes)."""
import os
import pickle
import select
import struct
import time

_HEADER = struct.Struct("<Q")
_FILES = "__files__"


class ChannelClosed(EOFError):
    pass


def send(fd: int, obj, raw: bytes | None = None, files: dict | None = None) -> None:
    """One frame: `obj`; then, if given, `raw` bytes (recv_into reads them) or, for each name
    in `files`, `count` bytes of file `fd` from `offset` (name: (fd, offset, count)), copied by
    the kernel (sendfile), never through this process's memory; recv returns them as
    obj[name] (obj is then a dict)."""
    if files:
        obj = {**obj, _FILES: {name: count for name, (_, _, count) in files.items()}}
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, memoryview(_HEADER.pack(len(data)) + data))
    if raw is not None:
        _write_all(fd, memoryview(raw))
    for src, offset, count in (files or {}).values():
        while count:
            sent = os.sendfile(fd, src, offset, count)
            offset, count = offset + sent, count - sent


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def recv_into(fd: int, buffer: bytearray) -> None:
    """The raw bytes after a frame, read straight into `buffer` (no copy left behind)."""
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        n = os.readv(fd, [view[done:]])
        if not n:
            raise ChannelClosed("channel closed")
        done += n


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no reply from the zygote in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd: int, timeout: float | None = None):
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    obj = pickle.loads(_read_exact(fd, size, deadline))
    if isinstance(obj, dict) and _FILES in obj:
        for name, count in obj.pop(_FILES).items():
            obj[name] = _read_exact(fd, count, deadline)
    return obj

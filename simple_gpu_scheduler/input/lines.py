"""Turning the bytes of the input stream into commands.

Pure logic, fed by the reader thread: `LineSplitter` cuts chunks into lines
without ever holding more than one over-long line's worth of bytes, and
`CommandAssembler` applies the line rules (CRLF, blank lines, ``#`` comments,
backslash continuation). Bytes are kept as typed: a command is ``bytes``, so a
latin-1 file name reaches the shell unchanged.
"""

from __future__ import annotations

from ..model.record import Record

TYPE_CHECKING = False  # `typing` costs start-up time; only checkers need it
if TYPE_CHECKING:
    from typing import List, Optional

#: The kernel's limit on one argument (MAX_ARG_STRLEN, 32 pages of 4 KiB, with
#: the terminating NUL): a longer command cannot be passed to ``sh -c``. Lines
#: past it are not kept in memory, only counted.
MAX_COMMAND_BYTES = 32 * 4096 - 1


#: Bytes kept of an over-long line: enough to name it in a message.
HEAD = 200


class Line(Record):
    """One input line without its newline; when `overlong` (its true length) is
    set, `data` holds only its first `HEAD` bytes."""

    __slots__ = ("data", "overlong")

    def __init__(self, data: bytes, overlong: Optional[int] = None) -> None:
        self.data = data
        self.overlong = overlong


class RawCommand(Record):
    """A command as assembled from the input, or why it cannot run."""

    __slots__ = ("text", "invalid", "line")

    def __init__(self, text: bytes, invalid: Optional[str] = None, line: int = 0) -> None:
        self.text = text
        self.invalid = invalid
        #: The input line it starts on, counting every line from 1 (0: unknown).
        self.line = line


class LineSplitter:
    """Split a byte stream into lines, dropping the bytes of over-long lines.

    A line longer than `limit` is reported once with its length, and its bytes
    are discarded as they arrive, so a 10 GB line costs no memory.
    """

    def __init__(self, limit: int = MAX_COMMAND_BYTES) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._skipped: Optional[int] = None  # length so far of a line being dropped
        self._head = b""  # its first bytes, for messages and to spot a comment

    def feed(self, chunk: bytes) -> List[Line]:
        lines: List[Line] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            self._take(chunk[start:end])
            lines.append(self._finish())
            start = end + 1
        self._take(chunk[start:])
        return lines

    def end(self) -> Optional[Line]:
        """The last line if the stream did not end with a newline."""
        if self._buffer or self._skipped is not None:
            return self._finish()
        return None

    def _take(self, piece: bytes) -> None:
        if self._skipped is not None:
            self._skipped += len(piece)
            if len(self._head) < HEAD:
                self._head += piece[:HEAD - len(self._head)]
        elif len(self._buffer) + len(piece) > self._limit:
            self._skipped = len(self._buffer) + len(piece)
            self._head = bytes(self._buffer[:HEAD] + piece[:HEAD])[:HEAD]
            self._buffer = bytearray()
        else:
            self._buffer += piece

    def _finish(self) -> Line:
        if self._skipped is not None:
            line = Line(self._head, overlong=self._skipped)
        else:
            line = Line(bytes(self._buffer))
        self._buffer = bytearray()
        self._skipped = None
        return line


def _continues(data: bytes) -> bool:
    """True when the line ends in an odd number of backslashes, as in ``sh``."""
    stripped = data.rstrip(b"\\")
    return (len(data) - len(stripped)) % 2 == 1


class CommandAssembler:
    """Apply the line rules and return whole commands.

    - a trailing ``\\r`` (CRLF files) is removed;
    - blank lines and lines whose first non-blank byte is ``#`` are skipped;
    - a line ending in a backslash continues on the next one: the lines are
      joined with their newline, backslash kept, and the shell removes the pair
      exactly as it would in a script. Not with ``continuation=False`` (JSON
      lines): there a bad line must not swallow the good one after it.

    Every line is counted, so a command knows the line it starts on.
    """

    def __init__(self, limit: int = MAX_COMMAND_BYTES, continuation: bool = True) -> None:
        self._limit = limit
        self._continuation = continuation
        self._parts: List[bytes] = []
        self._overlong: Optional[int] = None
        self._lines = 0
        self._start = 0

    def feed(self, line: Line) -> Optional[RawCommand]:
        self._lines += 1
        data = line.data[:-1] if line.data.endswith(b"\r") else line.data
        if not self._parts and self._overlong is None:
            self._start = self._lines
            stripped = data.strip()
            if not stripped or stripped.startswith(b"#"):
                return None  # an over-long comment is still a comment
        if line.overlong is not None:
            # Only its head is here: keep that for the message, count the rest.
            self._overlong = (self._overlong or 0) + line.overlong - len(line.data)
        self._parts.append(data)
        if line.overlong is None and self._continuation and _continues(data):
            return None
        return self._emit()

    def end(self) -> Optional[RawCommand]:
        """A command whose continuation the stream cut off, if any."""
        if self._parts or self._overlong is not None:
            return self._emit()
        return None

    def _emit(self) -> RawCommand:
        text = b"\n".join(self._parts)
        overlong = self._overlong
        self._parts = []
        self._overlong = None
        if overlong is not None or len(text) > self._limit:
            size = len(text) + (overlong or 0)
            return RawCommand(
                text[:HEAD],
                invalid=f"the command is {size} bytes long; the kernel allows "
                f"at most {self._limit} bytes in one argument",
                line=self._start,
            )
        if b"\0" in text:
            return RawCommand(text, invalid="the command contains a NUL byte", line=self._start)
        return RawCommand(text, line=self._start)

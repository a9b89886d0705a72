"""Standard output of the `loraquant` command when its reader goes away early.

`loraquant inspect FILE | head` closes the pipe after a few lines. Unix tools then end
quietly; Python raises BrokenPipeError at the next write (or at exit, when it flushes).
Inside tolerate_closed_stdout() a write into a closed pipe raises nothing: the rest of
the output is dropped (file descriptor 1 goes to the null device, so that the final
flush cannot fail either) and the command finishes what does not depend on its output,
a --plot or the compressed file, before it exits with EXIT_CLOSED_PIPE.
"""
from __future__ import annotations

import contextlib
import os
import sys

#: exit status of a command whose output pipe was closed: the status a shell reports
#: for a Unix tool stopped by SIGPIPE (128 + 13)
EXIT_CLOSED_PIPE = 141


class ClosedPipeTolerantStdout:
    """A text stream in front of sys.stdout whose write and flush never raise
    BrokenPipeError; `reader_gone` tells whether output was dropped."""

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop_the_rest()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop_the_rest()

    def __getattr__(self, name):  # encoding, isatty, fileno ...: the real stream's
        return getattr(self._stream, name)

    def _drop_the_rest(self) -> None:
        self.reader_gone = True
        # What the stream still buffers would fail again at exit ("Exception ignored
        # ... BrokenPipeError"); on the null device its flush succeeds.
        with contextlib.suppress(OSError, ValueError):  # a stream without a descriptor
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)


@contextlib.contextmanager
def tolerate_closed_stdout():
    """sys.stdout is a ClosedPipeTolerantStdout inside the block (which it yields)."""
    guard = ClosedPipeTolerantStdout(sys.stdout)
    sys.stdout = guard
    try:
        yield guard
    finally:
        guard.flush()
        sys.stdout = guard._stream

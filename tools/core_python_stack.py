"""The Python stack of a crashed process's thread, read from its core file, where ``py-bt`` and
faulthandler cannot give it: the thread had released the GIL (in a native call) and its C stack
was overwritten, so neither the C frames nor ``tstate->cframe`` (which lives on that stack) lead
back to Python. This walks the interpreter's thread list to the thread's ``PyThreadState`` and
finds its newest frame in the thread's own frame stack on the heap (``datastack_chunk``, CPython
3.11+), then follows the frames' ``previous`` links.

    gdb -q -batch -x tools/core_python_stack.py .venv/bin/python core            # the crashed thread
    THREAD=0x7f9792dd8b80 gdb -q -batch -x tools/core_python_stack.py python core   # another thread

Needs CPython's debug symbols in the interpreter (pyenv's and python.org's builds have them) and
a core file: ``ulimit -c unlimited`` in the shell that runs the crashing process (with
``/proc/sys/kernel/core_pattern`` = ``core`` the file lands in that process's working folder), and
``-p no:faulthandler`` for pytest, whose handler may itself crash on the overwritten stack and hide
the first fault. The twenty-third session found the rare CPU-test segfault with it
(docs/CPU_NATIVE.md, "A rare crash")."""
from __future__ import annotations

import os
import struct

import gdb  # type: ignore[import-not-found]  # only inside gdb


def _text(obj: gdb.Value) -> str:
    """A compact ASCII str object's text (file and function names are)."""
    try:
        o = obj.cast(gdb.lookup_type("PyASCIIObject").pointer())
        data = (o + 1).cast(gdb.lookup_type("char").pointer())
        return data.string(length=int(o["length"]))
    except gdb.error:
        return "?"


def _thread_state(thread_id: int) -> gdb.Value:
    ts = gdb.parse_and_eval("_PyRuntime.interpreters.head->threads.head")
    while int(ts) != 0:
        if int(ts["thread_id"]) == thread_id:
            return ts
        ts = ts["next"]
    raise gdb.GdbError(f"no Python thread state for thread {thread_id:#x}")


def _newest_frame(ts: gdb.Value) -> gdb.Value:
    """The frame nearest the top of the thread's frame stack whose ``f_code`` is a code object."""
    inf = gdb.selected_inferior()
    code_type = int(gdb.parse_and_eval("&PyCode_Type"))
    off = int(gdb.parse_and_eval("(long)&((_PyInterpreterFrame*)0)->f_code"))
    base = int(ts["datastack_chunk"]["data"].address)
    addr = int(ts["datastack_top"]) - 8
    while addr >= base:
        value = struct.unpack("<Q", bytes(inf.read_memory(addr, 8)))[0]
        try:
            is_code = value > 4096 and struct.unpack("<Q", bytes(inf.read_memory(value + 8, 8)))[0] == code_type
        except gdb.MemoryError:
            is_code = False
        if is_code:
            return gdb.Value(addr - off).cast(gdb.lookup_type("_PyInterpreterFrame").pointer())
        addr -= 8
    raise gdb.GdbError("no Python frame in the thread's frame stack")


def main() -> None:
    wanted = os.environ.get("THREAD")
    # pthread_t of the thread gdb selected (the one that crashed), as CPython records it
    thread_id = int(wanted, 16) if wanted else int.from_bytes(gdb.selected_thread().handle(), "little")
    frame = _newest_frame(_thread_state(thread_id))
    print(f"Python stack of thread {thread_id:#x}, newest call first:")
    for _ in range(200):
        if int(frame) == 0:
            break
        code = frame["f_code"]
        print(f"  {_text(code['co_filename'])}:{int(code['co_firstlineno'])} {_text(code['co_name'])}")
        frame = frame["previous"]


main()

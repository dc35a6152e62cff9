"""Runs inside a session's sandbox: the zygote, and the kernel it forks.

Stdlib plus cloudpickle (in the sandbox venv), no corral imports: this and ``/sandbox/runner.py``
are the only host code the guest sees. The process starts as a *zygote*: it imports the
scientific stack once (numpy, pandas, scipy, matplotlib with Agg), freezes the heap for the
GC, then waits on its command pipe. ``fork`` makes a *kernel*: a child with a fresh namespace
that serves ``run``/``snapshot``/``restore`` until it exits; the zygote waits for it and
reports how it ended, so the host can fork a fresh kernel in the same sandbox.

Frames on both pipes: ``>IQ`` (header length, payload length), a JSON header, the payload.
Untrusted on the host side: the user's code can write to these pipes too, which can only spoil
its own session.
"""

import gc
import io
import json
import os
import resource
import struct
import sys
import time
from typing import Any

sys.path.insert(0, "/sandbox")
import runner  # type: ignore[import-not-found,import-untyped,unused-ignore]

CMD_FD = -1  # both set from the JSON argument
OUT_FD = -1
HEAD = struct.Struct(">IQ")
VARIABLES_MAX = 200
SKIP_TYPES = ("module", "function", "builtin_function_or_method", "type")
_NO_MEMORY_SNAPSHOT = "the session ran out of memory while saving its state (memory limit)"


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        data = os.read(fd, min(n, 1 << 20))
        if not data:
            raise EOFError
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _read_into(fd: int, buf: memoryview) -> None:
    """Fill ``buf`` from the pipe without intermediate copies (a 100 MB snapshot stays 100 MB)."""
    got = 0
    while got < len(buf):
        n = os.readv(fd, [buf[got : got + (1 << 20)]])
        if not n:
            raise EOFError
        got += n


def _skip(fd: int, n: int) -> None:
    while n:
        data = os.read(fd, min(n, 1 << 20))
        if not data:
            raise EOFError
        n -= len(data)


def read_frame(fd: int) -> tuple[dict[str, Any], Any]:
    """The next command; its payload in one buffer, or ``None`` if it did not fit in memory.

    An oversized payload is read and dropped, so the pipe stays in step with the host.
    """
    hlen, plen = HEAD.unpack(_read_exact(fd, HEAD.size))
    header = json.loads(_read_exact(fd, hlen))
    if not plen:
        return header, b""
    try:
        payload = bytearray(plen)
    except MemoryError:
        _skip(fd, plen)
        return header, None
    _read_into(fd, memoryview(payload))
    return header, payload


def write_frame(fd: int, header: dict[str, Any], *payload: Any) -> None:
    """Header then each payload part written as is (no concatenated copy of large buffers)."""
    parts = [memoryview(p).cast("B") for p in payload]
    raw = json.dumps(header).encode()
    head = memoryview(HEAD.pack(len(raw), sum(len(p) for p in parts)) + raw)
    for data in (head, *parts):
        while data:
            data = data[os.write(fd, data) :]


# Snapshot blobs: pickle protocol 5 with out-of-band buffers (numpy/pandas data is sent from
# where it lies and, on restore, used in place): MAGIC, ``>I`` count, ``>Q`` lengths (pickle
# first, then each buffer), then the parts.
MAGIC = b"CPB1"


def dump_state(state: dict[str, Any]) -> list[Any]:
    import pickle

    import cloudpickle  # type: ignore[import-not-found,import-untyped,unused-ignore]

    buffers: list[memoryview] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buf.raw())
        except BufferError:  # not contiguous: keep it in the pickle
            return True
        return False

    data = cloudpickle.dumps(state, protocol=5, buffer_callback=out_of_band)
    lengths = [len(data), *(b.nbytes for b in buffers)]
    head = MAGIC + struct.pack(f">I{len(lengths)}Q", len(lengths), *lengths)
    return [head, data, *buffers]


def load_state(blob: bytearray) -> Any:
    import pickle

    view = memoryview(blob)
    if bytes(view[:4]) != MAGIC:
        return pickle.loads(view)  # noqa: S301 - this session's own state, in its sandbox
    (count,) = struct.unpack_from(">I", view, 4)
    lengths = struct.unpack_from(f">{count}Q", view, 8)
    offset = 8 + 8 * count
    parts = []
    for length in lengths:
        parts.append(view[offset : offset + length])
        offset += length
    return pickle.loads(parts[0], buffers=parts[1:])  # noqa: S301 - as above


# -- the kernel --------------------------------------------------------------------------------


def _fresh_namespace() -> dict[str, Any]:
    return {"__name__": "__main__", "__builtins__": __builtins__}


def _user_names(namespace: dict[str, Any]) -> list[str]:
    return [n for n in namespace if not n.startswith("_")]


def _describe(name: str, value: Any) -> dict[str, Any]:
    size = None
    for attr in ("nbytes",):
        got = getattr(value, attr, None)
        if isinstance(got, int):
            size = got
    if size is None:
        try:
            usage = value.memory_usage(deep=False)  # pandas
            size = int(usage.sum()) if hasattr(usage, "sum") else int(usage)
        except Exception:
            try:
                size = sys.getsizeof(value)
            except Exception:
                size = None
    shape = getattr(value, "shape", None)
    return {
        "name": name,
        "type": type(value).__qualname__,
        "size": size,
        "shape": str(tuple(shape)) if isinstance(shape, tuple) else None,
    }


def _variables(namespace: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in _user_names(namespace)[:VARIABLES_MAX]:
        value = namespace[name]
        if type(value).__name__ in SKIP_TYPES:
            continue
        out.append(_describe(name, value))
    return out


def _clear_output(output_dir: str) -> None:
    for entry in os.scandir(output_dir):
        try:
            if entry.is_dir(follow_symlinks=False):
                import shutil

                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _collect(output_dir: str, result: dict[str, Any], max_files: int, max_bytes: int) -> bytes:
    """Regular files at the top of /output as (name, size) in the header, bytes in the payload."""
    files: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for entry in sorted(os.scandir(output_dir), key=lambda e: e.name):
        if entry.is_symlink():
            result["notes"].append(f"skipped {entry.name}: symbolic links are not collected")
        elif not entry.is_file(follow_symlinks=False):
            result["notes"].append(f"skipped {entry.name}: only plain files are collected")
        elif len(files) >= max_files:
            result["notes"].append(f"skipped {entry.name}: more than {max_files} files")
        elif entry.stat(follow_symlinks=False).st_size > max_bytes:
            result["notes"].append(f"skipped {entry.name}: larger than {max_bytes} bytes")
        else:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(max_bytes + 1)[:max_bytes]
            files.append({"name": entry.name, "size": len(data)})
            blobs.append(data)
    result["files"] = files
    return b"".join(blobs)


def _cpu_used() -> float:
    """This kernel's CPU and that of the children it reaped (the host prefers its cgroup)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Kernel:
    def __init__(self) -> None:
        self.namespace = _fresh_namespace()
        self.pid = os.getpid()

    def run(self, cmd: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        output_dir = "/output"
        _clear_output(output_dir)
        os.chdir(output_dir)
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = spent + int(cmd.get("cpu_s", 30))
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        result: dict[str, Any] = {"last_expr_repr": None, "error": None, "figures": [], "notes": []}
        source = cmd["code"]
        started = time.monotonic()
        cpu_before = _cpu_used()
        _run_in(source, self.namespace, result)
        if os.getpid() != self.pid:  # a process the user's code forked: never answer for it
            os._exit(0)
        formats = tuple(f for f in cmd.get("formats", ["png"]) if f in ("png", "svg"))
        runner._save_figures(output_dir, formats or ("png",), result)
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")
        sys.stdout.flush()
        sys.stderr.flush()
        payload = _collect(output_dir, result, cmd["max_files"], cmd["max_file_bytes"])
        _clear_output(output_dir)
        result["variables"] = _variables(self.namespace)
        result["run_s"] = time.monotonic() - started
        result["cpu_s"] = round(_cpu_used() - cpu_before, 4)
        return result, payload

    def snapshot(self) -> tuple[dict[str, Any], list[Any]]:
        import cloudpickle  # type: ignore[import-not-found,import-untyped,unused-ignore]

        state = {n: v for n, v in self.namespace.items() if not n.startswith("__")}
        unpicklable: list[str] = []
        try:
            parts = dump_state(state)
        except MemoryError:
            return {"ok": False, "unpicklable": [], "reason": _NO_MEMORY_SNAPSHOT}, []
        except Exception:
            for name in list(state):
                try:
                    cloudpickle.dumps(state[name], protocol=5, buffer_callback=lambda _b: False)
                except MemoryError:
                    return {"ok": False, "unpicklable": [], "reason": _NO_MEMORY_SNAPSHOT}, []
                except Exception:
                    unpicklable.append(name)
                    del state[name]
            try:
                parts = dump_state(state)
            except Exception as exc:  # e.g. two names fine alone but not together
                return {"ok": False, "unpicklable": sorted(state), "reason": str(exc)[:500]}, []
        return {"ok": True, "unpicklable": unpicklable, "names": sorted(state)}, parts

    def restore(self, cmd: dict[str, Any], blob: Any) -> dict[str, Any]:
        if blob is None:
            reason = "the snapshot does not fit in the session's memory limit"
        else:
            try:
                state = load_state(blob)
                self.namespace.update(state)
                return {"ok": True, "replayed": 0, "names": sorted(state)}
            except MemoryError:
                reason = "the snapshot does not fit in the session's memory limit"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:500]
            blob = None
        replayed = 0
        devnull = io.StringIO()
        for cell in cmd.get("cells") or []:
            saved = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = devnull
            try:
                _run_in(cell, self.namespace, {"notes": []})
            finally:
                sys.stdout, sys.stderr = saved
            replayed += 1
        return {"ok": False, "reason": reason, "replayed": replayed}

    def serve(self) -> None:
        write_frame(OUT_FD, {"op": "kernel", "pid": os.getpid()})
        while True:
            try:
                cmd, payload = read_frame(CMD_FD)
            except EOFError:
                os._exit(0)
            op = cmd.get("op")
            if op == "run":
                header, blob = self.run(cmd)
                write_frame(OUT_FD, {"op": "ran", **header}, blob)
            elif op == "snapshot":
                header, parts = self.snapshot()
                write_frame(OUT_FD, {"op": "snapshot", **header}, *parts)
                del parts
            elif op == "restore":
                write_frame(OUT_FD, {"op": "restored", **self.restore(cmd, payload)})
            elif op == "exit":
                os._exit(0)
            else:
                write_frame(OUT_FD, {"op": "error", "reason": f"unknown op {op!r}"})


def _run_in(source: str, namespace: dict[str, Any], result: dict[str, Any]) -> None:
    """Like the runner's ``_run_user_code`` but in a namespace that outlives the call."""
    import ast

    try:
        tree = ast.parse(source, filename=runner.USER_FILE, mode="exec")
        last = None
        tail = tree.body[-1] if tree.body else None
        if isinstance(tail, ast.Expr):
            tree.body.pop()
            last = ast.Expression(tail.value)
        exec(compile(tree, runner.USER_FILE, "exec"), namespace)  # noqa: S102
        if last is not None:
            value = eval(compile(last, runner.USER_FILE, "eval"), namespace)  # noqa: S307
            if value is not None:
                result["last_expr_repr"] = runner._cut(repr(value), runner.REPR_MAX)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            result["error"] = {"type": "SystemExit", "message": str(exc.code), "line": None}
    except BaseException as exc:  # the user's failure is a normal result
        result["error"] = {
            "type": type(exc).__name__,
            "message": runner._cut(str(exc), runner.MESSAGE_MAX),
            "line": runner._user_line(exc),
        }


# -- the zygote --------------------------------------------------------------------------------


def _warm(conf: dict[str, Any]) -> float:
    started = time.monotonic()
    runner._seed_mpl_cache(conf.get("mpl_cache", ""))
    import matplotlib  # type: ignore[import-not-found,import-untyped,unused-ignore]

    matplotlib.use("Agg")
    import importlib

    import matplotlib.pyplot  # type: ignore[import-not-found,import-untyped,unused-ignore]

    for name in ("numpy", "pandas", "scipy", "scipy.stats"):
        importlib.import_module(name)

    figure = matplotlib.pyplot.figure(figsize=(2, 2))  # load fonts and the Agg renderer once
    figure.gca().plot([0, 1], [0, 1])
    figure.savefig(io.BytesIO(), format="png")
    matplotlib.pyplot.close("all")
    gc.collect()
    gc.freeze()  # the warm heap stays shared (copy-on-write) with every kernel forked from it
    return time.monotonic() - started


def main() -> None:
    global CMD_FD, OUT_FD
    conf: dict[str, Any] = json.loads(sys.argv[1])
    CMD_FD, OUT_FD = int(conf["cmd_fd"]), int(conf["out_fd"])
    # Arrow's own allocator (jemalloc/mimalloc) set up in the zygote fails after the kernel's
    # RLIMIT_AS is lowered ("malloc of size 64 failed"); the system allocator does not.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    sys.argv = ["main.py"]
    sys.stdin = io.StringIO()
    warm_s = _warm(conf)
    if conf.get("max_processes"):
        # Inside the sandbox's user namespace RLIMIT_NPROC counts only this sandbox's
        # processes (and its cgroup's pids limit, when there is one, bounds them as well).
        nproc = int(conf["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    write_frame(OUT_FD, {"op": "ready", "warm_s": warm_s, "pid": os.getpid()})
    while True:
        try:
            cmd, _ = read_frame(CMD_FD)
        except EOFError:
            return
        if cmd.get("op") != "fork":  # meant for a kernel that has just died: say there is none
            write_frame(OUT_FD, {"op": "nokernel", "for": str(cmd.get("op"))[:40]})
            continue
        pid = os.fork()
        if pid == 0:
            try:
                _limit_memory(int(cmd.get("memory_mb") or 0))
                Kernel().serve()
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        write_frame(OUT_FD, {"op": "exited", "pid": pid, "status": status})


def _limit_memory(memory_mb: int) -> None:
    """The session's memory limit counts what its code adds to the warm stack.

    RLIMIT_AS covers the address space; the imported stack (shared copy-on-write with the
    zygote) already takes several hundred MB of it, so the kernel gets that plus ``memory_mb``,
    within the zygote's own hard limit. The sandbox's cgroup, when there is one, bounds the
    real memory of the whole sandbox.
    """
    if memory_mb <= 0:
        return
    with open("/proc/self/statm") as fh:
        base = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = base + (memory_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


if __name__ == "__main__":
    main()

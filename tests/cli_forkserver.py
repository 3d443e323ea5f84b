"""Runs Python scripts (launch/*.py, tests' helpers) in forked children of one process that imported the heavy
libraries once; tests/script_server.py is its client, the way tests start it.

A script run this way skips ~4 s of Python start-up and imports on a 2-core machine and behaves as the real
command: the child runs the script as ``__main__`` (defining its absl flags afresh; this process defines none),
with its own argv, environment, working directory and stdout/stderr files, stdin from /dev/null, in a process
group of its own, and exits as the interpreter would (non-daemon threads joined, ``atexit`` handlers
run). No JAX backend is started here before forking (importing jax starts none), so each child starts its own as
a fresh process would, reading XLA_FLAGS then; JAX's own settings (JAX_* variables) are read when jax is
imported, so a server serves one environment (the client keeps one server per environment).

Protocol: one JSON object per line on stdin, ``{"argv": [script, *args], "env": {...}, "cwd": "...", "out":
"...", "err": "...", "prelude": "..."}`` (``env``, the child's whole environment, and ``prelude``, Python run in
the child before the script, optional); per case, ``{"pid": N}`` on stdout once the child is forked, then
``{"returncode": N}``.
"""

import json
import os
import runpy
import sys

import flax.nnx  # noqa: F401 - imported once, before forking
import jax  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401
from absl import flags  # noqa: F401

import wespe.evaluation.evaluate  # noqa: F401
import wespe.evaluation.sweep  # noqa: F401
import wespe.training.loop  # noqa: F401


def _exit_as_the_interpreter_would(code: int) -> None:
    import atexit
    import threading
    try:
        threading._shutdown()  # joins non-daemon threads, as the interpreter does at exit
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _child(case: dict) -> None:
    os.setpgid(0, 0)  # a group of its own: a client that times out kills it and whatever it started
    os.chdir(case["cwd"])
    if "env" in case:  # the whole environment, as a subprocess would have it
        os.environ.clear()
        os.environ.update(case["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    for fd, path in ((1, case["out"]), (2, case["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = list(case["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    code = 0
    try:
        if case.get("prelude"):
            exec(compile(case["prelude"], "<prelude>", "exec"), {"__name__": "__prelude__"})
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        import traceback
        traceback.print_exc()
        code = 1
    _exit_as_the_interpreter_would(code)


def main() -> None:
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(case)
        try:
            os.setpgid(pid, pid)  # here too, so the group exists before the client can act on it
        except OSError:  # the child did it first (or has already exited)
            pass
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()

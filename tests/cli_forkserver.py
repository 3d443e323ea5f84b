"""Runs launch/*.py command lines in forked children of one process that has imported the heavy libraries once.

Each bad-input case of tests/test_cli_errors.py would otherwise pay ~4 s of Python start-up and imports on a
2-core machine; forked from here, a case costs a fraction of a second and behaves as the real command: the child
runs the script as ``__main__`` (defining its absl flags afresh in the child; this process defines none), with
its own argv, environment overrides, working directory and stdout/stderr files. No JAX backend is started here
before forking (importing jax starts none), so the children start theirs as a fresh process would.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "env": {...}, "cwd": "...", "out": "...",
"err": "..."}``; one line ``{"returncode": N}`` per case on stdout.
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

import wespe.evaluation  # noqa: F401
import wespe.loop  # noqa: F401
import wespe.sweep  # noqa: F401


def _child(case: dict) -> None:
    os.chdir(case["cwd"])
    os.environ.update(case.get("env", {}))
    for fd, path in ((1, case["out"]), (2, case["err"])):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = list(case["argv"])
    sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: traceback, status 1
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(case)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()

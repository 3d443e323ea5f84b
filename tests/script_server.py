"""``run(command, env=..., cwd=..., timeout=...)``: ``subprocess.run(command, capture_output=True, text=True)``
for ``[python, script.py, *args]`` commands, run in a child forked from a warm server (tests/cli_forkserver.py)
instead of a fresh interpreter: each run skips the ~4 s of start-up and imports that a subprocess pays on a
2-core machine, and behaves as the command would (the server's docstring says how).

One server per environment (JAX reads its JAX_* settings when it is imported, so a server serves the
environment it was started with; :data:`PER_TEST` variables aside, which each child gets), started on first
use, kept while this process runs (at most ``MAX_SERVERS``, the least recently used closed first). Commands that
need the real process (a signal sent to its pid, a re-execution, ``python -c``) keep using ``subprocess``.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_SERVERS = 6
# Variables that change from test to test (pytest sets this one per test): not part of a server's key, given to
# each child instead (a server per value would start a fresh interpreter for every command).
PER_TEST = ("PYTEST_CURRENT_TEST",)


class ScriptServer:
    def __init__(self, env: dict):
        self.env = {k: v for k, v in env.items() if k not in PER_TEST}
        self.logs = Path(tempfile.mkdtemp(prefix="wespe-script-server-"))
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_forkserver.py")], cwd=REPO,
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)  # Ctrl-C at the terminal is pytest's, not its

    def run(self, argv: list[str], cwd: Path | str, timeout: float, prelude: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """``argv``: the script and its arguments (what follows ``python``); ``env``: the child's whole
        environment (default: the server's plus this process's ``PYTEST_CURRENT_TEST``); the variables JAX reads
        at import must be the server's."""
        self.count += 1
        out, err = self.logs / f"{self.count}.out", self.logs / f"{self.count}.err"
        if env is None:
            env = {**self.env, **{k: os.environ[k] for k in PER_TEST if k in os.environ}}
        case = {"argv": [str(a) for a in argv], "cwd": str(cwd), "out": str(out), "err": str(err), "env": env,
                "prelude": prelude}
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._reply(60))["pid"]
        reply = self._reply(timeout)
        if reply is None:  # as subprocess.run does: kill the command (and what it started), then raise
            os.killpg(pid, signal.SIGKILL)
            self._reply(60)
            raise subprocess.TimeoutExpired(argv, timeout, out.read_text(), err.read_text())
        result = subprocess.CompletedProcess(argv, json.loads(reply)["returncode"], out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        return result

    def _reply(self, timeout: float) -> str | None:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        assert line, f"the script server died (exit status {self.proc.poll()})"
        return line

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        for f in self.logs.iterdir():
            f.unlink()
        self.logs.rmdir()


_servers: OrderedDict[tuple, ScriptServer] = OrderedDict()


def server_for(env: dict) -> ScriptServer:
    """The server for ``env`` (started now if there is none): one per environment but for :data:`PER_TEST`."""
    key = tuple(sorted((k, v) for k, v in env.items() if k not in PER_TEST))
    if key in _servers:
        _servers.move_to_end(key)
    else:
        if len(_servers) >= MAX_SERVERS:
            _servers.popitem(last=False)[1].close()
        _servers[key] = ScriptServer(env)
    return _servers[key]


@atexit.register
def _close_all() -> None:
    while _servers:
        _servers.popitem()[1].close()


def run(command: list, *, env: dict | None = None, cwd: Path | str = REPO, timeout: float = 300,
        prelude: str | None = None) -> subprocess.CompletedProcess:
    """``command``: ``[sys.executable, script, *args]``, as for ``subprocess.run``; ``env`` the whole
    environment (default: this process's); ``prelude``: Python run in the child before the script (a patch)."""
    if len(command) < 2 or command[0] != sys.executable or str(command[1]).startswith("-"):
        raise ValueError(f"not a [sys.executable, script, ...] command: {command[:2]}")
    env = dict(os.environ if env is None else env)
    return server_for(env).run(list(command[1:]), cwd, timeout, prelude, env)

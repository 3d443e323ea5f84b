"""tests/script_server.py, which most end-to-end tests run the entry points with: a forked child must behave as
``subprocess.run([python, script, ...], capture_output=True, text=True)`` would."""

import os
import subprocess
import sys

import pytest
import script_server

SCRIPT = '''
import atexit, json, os, sys, threading, time
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "var": os.environ.get("WESPE_SERVER_TEST"),
                  "stdin": sys.stdin.read(), "patched": globals().get("PATCHED"), "pid": os.getpid(),
                  "patch_seen": getattr(json, "patched_by_prelude", False)}))
print("to stderr", file=sys.stderr)
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()  # joined at exit
atexit.register(lambda: print("atexit ran"))
if len(sys.argv) > 1 and sys.argv[1] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0)
'''


def test_a_forked_run_is_what_a_subprocess_gives(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, WESPE_SERVER_TEST="one")
    result = script_server.run([sys.executable, str(script), "3"], env=env, cwd=tmp_path, timeout=60,
                               prelude="import json\njson.patched_by_prelude = True")
    assert result.returncode == 3 and result.stderr == "to stderr\n"
    first, *rest = result.stdout.splitlines()
    assert rest == ["thread done", "atexit ran"]  # non-daemon threads joined, then atexit, as at a normal exit
    seen = __import__("json").loads(first)
    assert seen["argv"] == [str(script), "3"] and seen["cwd"] == str(tmp_path) and seen["var"] == "one"
    assert seen["stdin"] == "" and seen["patch_seen"] and seen["pid"] != os.getpid()
    # Another test's value of PYTEST_CURRENT_TEST: the same server; another variable: another one.
    server = script_server.server_for(env)
    assert script_server.server_for({**env, "PYTEST_CURRENT_TEST": "x (call)"}) is server
    assert script_server.server_for({**env, "WESPE_SERVER_TEST": "two"}) is not server
    again = script_server.run([sys.executable, str(script)], env={**env, "WESPE_SERVER_TEST": "two"}, cwd=tmp_path,
                              timeout=60)
    assert again.returncode == 0 and '"var": "two"' in again.stdout and '"patch_seen": false' in again.stdout


def test_a_run_over_its_timeout_is_killed_and_raises(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    with pytest.raises(subprocess.TimeoutExpired):
        script_server.run([sys.executable, str(script), "sleep"], cwd=tmp_path, timeout=2)
    assert script_server.run([sys.executable, str(script)], cwd=tmp_path, timeout=60).returncode == 0  # still serves
    with pytest.raises(ValueError, match="not a"):
        script_server.run(["bash", str(script)])

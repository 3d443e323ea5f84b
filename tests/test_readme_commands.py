"""Every command in the ```bash blocks of README.md and of the long-form pages it links (experiments/results/*.md)
runs as written and leaves what the text says it leaves, every experiment config trains on a user's two folders,
and every link of those pages leads somewhere.

The commands are parsed from those files when the tests are collected, so an edit that breaks a command breaks
a test. Each runs in a fresh folder (a workspace) that holds what the README's placeholders name: small photo
folders (``phone_dir``, ``dslr_dir``, ``photos/``, ``folder/``, ``my_photos``, ``photo.jpg``, the DPED layout under
``dped/``), ``imagenet-vgg-verydeep-19.mat`` (random weights in MatConvNet's layout), ``models_orig`` and
``path/to/models_orig`` (the official DPED generators of ``../shared/dped_pretrained``; commands that need them
are skipped where they are absent, as in a fresh clone), ``experiments/x.py`` (a tiny quality preset),
``runs/x`` (the run the README trains there, for the commands that read it), and this repository's ``launch``
and ``experiments``. The text is changed in three ways only:

* a leading ``pip install ... &&`` is dropped (nothing is installed);
* an elided value (``--config.vgg_weights=...``, ``--source=...``) gets a placeholder file or folder;
* flags that make each run take seconds are appended to every ``python launch/<script>.py`` (tiny networks and
  patches, 2 steps, one seed, small photos): a flag given twice takes its last value, so the command's own flags
  stay as written before them.

A single ``python launch/<script>.py ...`` runs in a child of a warm server (tests/script_server.py: as the
script would run from a shell, without paying the imports again); anything else through ``bash -c``. Commands
that are not run here are in ``NOT_RUN`` with the reason: not runnable here, or costly and run elsewhere in the
suite (the test named); their ``python launch/*.py`` lines are still parsed by their scripts
(``--only_check_args``), so a flag or config key that no longer exists fails. Any other command is run, so a new
README command runs or is listed.
The runs share a persistent compilation cache and XLA:CPU without its expensive passes (as
tests/test_train_cli.py): the plumbing is tested, not the numbers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest
import script_server
from test_train_cli import write_pngs
from test_vgg import write_matconvnet

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "experiments" / "results"  # the README's long form: measurements, tables, their commands
DOCS = [README, *sorted(RESULTS.glob("*.md"))]  # every file whose commands are run here
SHARED_WEIGHTS = REPO.parent / "shared" / "dped_pretrained"  # the official DPED generators, where CI has them
TIMEOUT = 300  # seconds per command: generous, but a hung command fails instead of hanging CI

# A pattern (re.search) of a command of README.md or experiments/results/*.md -> why it is not run here. Its
# ``python launch/*.py`` command lines are still parsed by their scripts (``--only_check_args``): every flag and config
# key must exist.
NOT_RUN = {
    r"python -m pytest": "the test suite itself, of which this module is part",
    r"python launch/train\.py --config=experiments/demo\.py --workdir=runs/demo$":
        "the quick start's demo (300 steps, ~2.5 min): tests/test_demo.py runs this command as written and checks "
        "the gain it claims",
    r'^pip install -e "\.\[quality\]"\s*(#|$)': "only installs packages (scikit-learn, for two of the benchmark's "
                                                "photos), which the test environment has",
    r"^srun ": "a SLURM batch script: needs srun and a GPU cluster",
    r"^gcloud compute tpus": "a Cloud TPU pod: needs gcloud and TPU VMs",
    r"^python -m venv torchref": "creates a venv and installs torch from the network",
    r"--torch_python=torchref/bin/python": "needs the PyTorch reference venv (torchref/, made by the command above); "
                                           "tests/test_benchmark_cli.py runs --mode=torch_ratio and the enhance side "
                                           "by side with a stand-in for torch",
    r"^for i in 0 1; do": "two processes compiling sharded steps take ~2 min on 2 cores; tests/test_parallel.py"
                          "::test_two_processes_preempt_resume_and_match_one_process runs launch/train.py with these "
                          "flags (2 processes x 2 CPU devices, gloo), preempts, resumes and compares with one process",
    r"launch/benchmark\.py (?!.*--mode=)":
        "times training steps; tests/test_benchmark_cli.py runs --mode=train_step on tiny networks "
        "(test_train_step_mode_bfloat16_config_file_and_bad_device_count: experiments/dped_paired.py in bfloat16)",
    r"launch/benchmark\.py --mode=scaling":
        "needs 8 devices (on a CPU, --num_cpu_devices: sharded compiles, ~1 min even for 1 and 2 devices); "
        "tests/test_benchmark_cli.py::test_scaling_mode_reports_throughput_flops_and_mfu runs it on 1 and 2",
    r"launch/benchmark\.py --mode=max_batch":
        "compiles the step at every batch it tries (~50 s here even capped at batch 2); "
        "tests/test_benchmark_cli.py::test_max_batch_mode_end_to_end runs it capped at batch 2",
    r"launch/benchmark\.py --mode=suite":
        "every benchmark at once (~50 s here at tiny sizes); tests/test_benchmark_cli.py"
        "::test_suite_runs_every_part_with_its_settings checks its plan, and each part runs in that file's other tests",
    r"launch/quality\.py --output_dir=runs/quality\s*(#|$)":
        "trains the three presets of experiments/quality/ at their laptop scale (launch/quality.py has no flag that "
        "shrinks a network): ~2.5 min here even with --seeds=0 --steps=2; each preset trains on two folders in "
        "test_experiment_config_trains_on_user_folders, and the --presets path runs in the command after this one",
}


# ----------------------------------------------------------------------------------------- the README's commands

def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def _is_complete(command: str) -> bool:
    """Whether ``command`` is a whole shell command: quotes closed, every ``do`` matched by a ``done``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)  # "done;" is two words; "#" starts a comment
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return words.count("do") == words.count("done")


def _commands_of_block(block: str, doc: str = "README.md") -> list[str]:
    """The block's commands: continuation lines joined, lines accumulated until the command is complete (a ``for``
    loop, a quoted multi-line argument), comment-only lines and blank lines dropped."""
    commands, current = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current = f"{current}\n{line}" if current else line
        if _is_complete(current):
            commands.append(current.strip())
            current = ""
    assert not current, f"{doc}: an unfinished command in a bash block: {current!r}"
    return commands


def doc_name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def readme_commands() -> dict[str, str]:
    """Every command of README.md's bash blocks, then those of experiments/results/*.md, each once -> the file it
    is first shown in."""
    found = {}
    for doc in DOCS:
        for block in _bash_blocks(doc.read_text()):
            for command in _commands_of_block(block, doc_name(doc)):
                found.setdefault(command, doc_name(doc))
    return found


def why_not_run(command: str) -> str | None:
    reasons = [why for pattern, why in NOT_RUN.items() if re.search(pattern, command)]
    assert len(reasons) <= 1, f"{command!r} matches several NOT_RUN entries"
    return reasons[0] if reasons else None


def without_pip_install(command: str) -> str:
    return re.sub(r"^pip install [^&]*&&\s*", "", command)


def _command_id(command: str) -> str:
    words = " ".join(without_pip_install(command).split())
    where = COMMAND_DOCS.get(command, "README.md")
    return ("" if where == "README.md" else f"{Path(where).stem}: ") + re.sub(r"^python (launch/)?", "", words)[:70]


COMMAND_DOCS = readme_commands()
COMMANDS = list(COMMAND_DOCS)


# ------------------------------------------------------------------------------------------------- invocations

INVOCATION = re.compile(r"python launch/(\w+)\.py(?:[^&;|\n#'])*")  # one script's command line, up to an operator


def invocations(command: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """(script, its flags (the last value of each), its positional arguments) of every ``python launch/<script>.py``
    in ``command``."""
    out = []
    for match in INVOCATION.finditer(command):
        flags, positional = {}, []
        for word in shlex.split(match.group(0))[2:]:
            if word.startswith("--"):
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                positional.append(word)
        out.append((match.group(1), flags, positional))
    return out


# Tiny networks for every training run: width-4 one-block networks, 16 px patches, batch 2 (4 where the batch is
# split over 4 devices), 2 steps, VGG up to relu1_2, pooled discriminator heads (any patch size).
TRAIN_TINY = ["--config.num_steps=2", "--config.batch_size=2", "--config.patch_size=16",
              "--config.generator.width=4", "--config.generator.num_blocks=1", "--config.content_layer=relu1_2",
              "--config.discriminator.head=global_pool", "--config.num_sample_crops=2"]
BENCHMARK_TINY = [*TRAIN_TINY[1:7], "--repeats=1", "--warmup=0"]


def tiny_flags(script: str, flags: dict[str, str]) -> list[str]:
    """The flags appended to one invocation of ``launch/<script>.py`` (see the module docstring)."""
    if script == "train":
        devices = int(flags.get("num_cpu_devices") or 1) * int(flags.get("num_processes") or 1)
        return TRAIN_TINY + ([f"--config.batch_size={devices}"] if devices > 2 else [])
    if script == "quality":
        return ["--seeds=0", "--steps=2", "--max_side=200"]  # 200 px: the loop's held-out crops are 128 px
    if script == "benchmark":
        return ["--megapixels=0.01", "--tile=64", "--repeats=1"] if flags.get("mode") == "enhance" else BENCHMARK_TINY
    return []  # enhance, evaluate, sweep: the photos are small already


# An elided value in the README -> the placeholder the workspace holds for it.
ELIDED = {"--config.vgg_weights=...": "--config.vgg_weights=imagenet-vgg-verydeep-19.mat",
          "--source=...": "--source=photos/"}


def as_run_here(command: str) -> str:
    """The command as this module runs it (module docstring): no pip, elided values filled, tiny flags appended."""
    command = without_pip_install(command)
    for elided, filled in ELIDED.items():
        command = command.replace(elided, filled)

    def append_tiny(match: re.Match) -> str:
        (script, flags, _), = invocations(match.group(0))
        return " ".join([match.group(0).rstrip(), *tiny_flags(script, flags)]) + " "
    return INVOCATION.sub(append_tiny, command)


# ---------------------------------------------------------------------------------------------------- workspace

PHOTO_NAMES = [f"p{i}.png" for i in range(4)]
QUALITY_PRESET = (REPO / "tests" / "quality_tiny_config.py").read_text()  # the README's experiments/x.py


@pytest.fixture(scope="session")
def shared_files(tmp_path_factory):
    """What every workspace links to: the VGG-19 .mat (80 MB: written once a session), a ``python`` on PATH that
    is this interpreter, and the converted-weights cache the commands of this worker share."""
    root = tmp_path_factory.mktemp("readme_shared")
    weights = session_folder(tmp_path_factory, "readme_vgg")
    mat = weights / "imagenet-vgg-verydeep-19.mat"
    with exclusive(weights / "lock"):
        if not mat.exists():
            from wespe import vgg
            write_matconvnet(weights / "partial.mat", vgg.random_weights(seed=1)).rename(mat)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    # The suite's compilation cache and XLA settings (tests/conftest.py), shared with tests/test_train_cli.py's
    # runs of the same tiny configs.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(bin_dir), os.environ["PATH"]]),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", WESPE_CACHE_DIR=str(weights / "wespe_cache"),
               WESPE_TUNE_MALLOC="0")  # no re-exec at start-up: one process start per command
    return {"mat": mat, "env": env}


def _photo_folder(folder: Path, seed: int, names=PHOTO_NAMES) -> Path:
    return write_pngs(folder, names, size=40, seed=seed)


def make_workspace(root: Path, shared: dict) -> Path:
    """A folder holding every placeholder the README's commands name (module docstring), except ``runs/``."""
    root.mkdir(parents=True)
    (root / "launch").symlink_to(REPO / "launch")
    (root / "experiments").mkdir()  # the repository's, plus the README's experiments/x.py
    for entry in (REPO / "experiments").iterdir():
        (root / "experiments" / entry.name).symlink_to(entry)
    (root / "experiments" / "x.py").write_text(QUALITY_PRESET)
    (root / "imagenet-vgg-verydeep-19.mat").symlink_to(shared["mat"])
    if SHARED_WEIGHTS.is_dir():
        (root / "models_orig").symlink_to(SHARED_WEIGHTS)
        (root / "path" / "to").mkdir(parents=True)
        (root / "path" / "to" / "models_orig").symlink_to(SHARED_WEIGHTS)
    # The same file names on both sides: the paired configs pair them.
    _photo_folder(root / "phone_dir", seed=1)
    _photo_folder(root / "dslr_dir", seed=2)
    for name, seed in (("photos", 3), ("folder", 4), ("my_photos", 5)):
        _photo_folder(root / name, seed, names=["a.png", "b.jpg"])
    write_pngs(root, ["photo.jpg"], size=40, seed=6)
    phone = root / "dped" / "iphone"
    _photo_folder(phone / "training_data" / "iphone", seed=7)
    _photo_folder(phone / "training_data" / "canon", seed=8)
    _photo_folder(phone / "test_data" / "patches" / "iphone", seed=9, names=["0.jpg", "1.jpg"])
    _photo_folder(phone / "test_data" / "patches" / "canon", seed=10, names=["0.jpg", "1.jpg"])
    _photo_folder(phone / "test_data" / "full_size_test_images", seed=11, names=["0.jpg"])
    return root


# ---------------------------------------------------------------------------------------------------- running

class ForkServer:
    """A ``python launch/<script>.py ...`` command as it would run from a shell, in a child forked from a warm
    server started with the commands' environment (tests/script_server.py): ~4 s of start-up saved per command
    on 2 cores."""

    def __init__(self, env: dict):
        self.env = env

    def run(self, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        try:  # the server is looked up per command: script_server may have closed an idle one meanwhile
            return script_server.run([sys.executable, *argv], env=self.env, cwd=cwd, timeout=TIMEOUT)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{argv} ran over {TIMEOUT} s:\n{(e.stderr or '')[-3000:]}")


def one_invocation(command: str) -> list[str] | None:
    """``command``'s arguments after ``python`` when it is a single ``python launch/<script>.py ...`` with no
    shell syntax (what the fork server can run), else None."""
    words = shlex.split(command, comments=True)
    plain = words[:1] == ["python"] and len(words) > 1 and words[1].startswith("launch/")
    return words[1:] if plain and not any(set(w) & set(";&|$`<>") for w in words) else None


@contextmanager
def exclusive(lock: Path):
    """Holds an exclusive lock on the file ``lock`` (an OS flock: pytest-xdist's workers are processes)."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Runs:
    """Runs each command once per test session, in a fresh workspace named after it. pytest-xdist's workers share
    the results (``root`` is the session's, a lock per command), so a command that another worker ran, or is
    running, is not run again: the README's run that trains ``runs/x`` serves every command that reads one."""

    def __init__(self, root: Path, shared: dict, server: ForkServer):
        self.root, self.shared, self.server = root, shared, server

    def run(self, command: str, trained_run: Path | None = None) -> tuple[subprocess.CompletedProcess, Path]:
        workspace = self.root / hashlib.sha1(command.encode()).hexdigest()[:16]
        result = workspace.with_suffix(".json")
        with exclusive(workspace.with_suffix(".lock")):
            if not result.exists():
                shutil.rmtree(workspace, ignore_errors=True)  # left by a worker that died mid-run
                proc = self._run(command, make_workspace(workspace, self.shared), trained_run)
                result.write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout,
                                              "stderr": proc.stderr}))
        done = json.loads(result.read_text())
        return subprocess.CompletedProcess(command, done["returncode"], done["stdout"], done["stderr"]), workspace

    def _run(self, command: str, workspace: Path, trained_run: Path | None) -> subprocess.CompletedProcess:
        if trained_run is not None:
            shutil.copytree(trained_run, workspace / "runs" / "x", ignore=shutil.ignore_patterns("train.lock"))
        argv = one_invocation(command)
        if argv is not None:
            return self.server.run(argv, workspace)
        return subprocess.run(["bash", "-c", command], cwd=workspace, env=self.shared["env"], capture_output=True,
                              text=True, timeout=TIMEOUT)

    def check_flags(self, command: str) -> None:
        """Every ``python launch/<script>.py`` of ``command`` parses its flags and config (absl's
        ``--only_check_args``: exit 0 once parsed); a loop variable takes the loop's first value."""
        loop = re.match(r"for (\w+) in (\S+)", command)
        for match in INVOCATION.finditer(command):
            text = match.group(0) if not loop else match.group(0).replace(f"${loop.group(1)}", loop.group(2))
            argv = shlex.split(text)[1:] + ["--only_check_args"]
            proc = self.server.run(argv, REPO)
            assert proc.returncode == 0, f"{text}\n{proc.stderr[-2000:]}"


def session_folder(tmp_path_factory, name: str) -> Path:
    """A folder every pytest-xdist worker of this session shares (the session's base temporary folder)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def runs(tmp_path_factory, shared_files):
    return Runs(session_folder(tmp_path_factory, "readme_runs"), shared_files, ForkServer(shared_files["env"]))


def reads_a_trained_run(command: str) -> bool:
    return any(script != "train" and ("runs/x" in (flags.get("checkpoint"), flags.get("workdir")))
               for script, flags, _ in invocations(command))


def trained_run(runs: Runs) -> Path:
    """``runs/x`` as the README's first command that trains it leaves it."""
    producer = next(c for c in COMMANDS if any(s == "train" and f.get("workdir") == "runs/x"
                                               for s, f, _ in invocations(c)) and not why_not_run(c))
    proc, workspace = runs.run(as_run_here(producer))
    assert proc.returncode == 0, f"{producer}\n{proc.stderr[-3000:]}"
    return workspace / "runs" / "x"


# ------------------------------------------------------------------------------------- what each command leaves

TRAINING_OUTPUTS = ("config.json", "data_report.json", "metrics.jsonl", "tensorboard", "samples", "checkpoints",
                    "generator.npz")  # README: Workdir layout
EVALUATION_OUTPUTS = ("results.json", "results.csv", "results.md", "best_worst.png")


def _enhanced_files(workspace: Path, inputs: list[str]) -> list[str]:
    """The output paths (relative to --output) of ``inputs``: a file by its name, a folder's photos by their path
    in it."""
    out = []
    for item in inputs:
        path = workspace / item
        out += [p.relative_to(path).as_posix() for p in sorted(path.rglob("*.*"))] if path.is_dir() else [path.name]
    return out


def sweep_plots(sweep_file: str) -> list[str]:
    """The README's plots of a sweep: metric_vs_step.png for a run's checkpoints, models.png for models."""
    cells = runpy.run_path(str(REPO / sweep_file))["get_sweep"]()["cells"]
    return (["metric_vs_step.png"] * any("steps" in c for c in cells)
            + ["models.png"] * any("pretrained" in c or "checkpoint" in c for c in cells))


def expected_outputs(script: str, flags: dict[str, str], positional: list[str], workspace: Path) -> list[str]:
    """The files (relative to the workspace) the README says a command of ``script`` with these flags leaves."""
    if script == "train":
        workdir = flags["workdir"]
        builtin_demo = flags.get("config", "").endswith("experiments/demo.py") and not flags.get("source")
        names = TRAINING_OUTPUTS + (("demo_result.json", "demo_grid.png") if builtin_demo else ())
        return [f"{workdir}/{name}" for name in names]
    if script == "enhance":
        files = _enhanced_files(workspace, positional)
        raw = [str(Path(f).with_suffix(".npy")) for f in files] if "save_raw" in flags else []
        return [f"{flags['output']}/{f}" for f in files + raw]
    if script == "evaluate":
        return [f"{flags['output_dir']}/{name}" for name in EVALUATION_OUTPUTS]
    if script == "sweep":
        return [f"{flags['output_dir']}/{name}" for name in ("sweep.csv", "sweep.md", *sweep_plots(flags["sweep"]))]
    if script == "quality":
        return [f"{flags['output_dir']}/{name}" for name in ("results.json", "results.md", "grid.png")]
    if script == "benchmark":
        return [flags["out"]] if "out" in flags else []  # else its JSON on stdout (checked below)
    raise AssertionError(f"no expected outputs known for launch/{script}.py: add them here")


def check_outputs(command: str, proc: subprocess.CompletedProcess, workspace: Path) -> None:
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    for script, flags, positional in invocations(command):
        missing = [p for p in expected_outputs(script, flags, positional, workspace) if not (workspace / p).exists()]
        assert not missing, f"{command}: missing {missing}\n{proc.stderr[-3000:]}"
        if script == "benchmark":
            text = (workspace / flags["out"]).read_text() if "out" in flags else proc.stdout
            assert json.loads(text[text.index("{"):])["device"], text[-2000:]


def _needs_missing_weights(command: str) -> str | None:
    """Why ``command`` cannot run without the official DPED generators, when they are not all here."""
    official = any("weights_dir" in flags for _, flags, _ in invocations(command))
    if not official:
        return None
    if not SHARED_WEIGHTS.is_dir():
        return f"needs the official DPED generators (not in {SHARED_WEIGHTS}; a fresh clone has none)"
    names = re.findall(r"--pretrained=dped_(\w+)", command)
    if "sweeps/dped_pretrained.py" in command:
        names = ["iphone", "blackberry", "sony"]  # the sweep's cells
    absent = [n for n in names if not (SHARED_WEIGHTS / f"{n}_orig.index").is_file()]
    return f"needs {', '.join(f'{n}_orig' for n in absent)}, not in {SHARED_WEIGHTS}" if absent else None


# ------------------------------------------------------------------------------------------------------ tests

def test_the_readme_commands_are_parsed_and_every_listed_one_exists():
    assert len(COMMANDS) >= 25, COMMANDS
    assert all(re.match(r"(pip |python |srun |gcloud |for |MALLOC_)", c) for c in COMMANDS), COMMANDS
    for pattern in NOT_RUN:  # a listed command that left the README and its pages is listed no more
        assert any(re.search(pattern, c) for c in COMMANDS), f"NOT_RUN lists {pattern!r}, in no command of {DOCS}"
    two_processes = next(c for c in COMMANDS if c.startswith("for "))
    assert len(invocations(two_processes)) == 1 and two_processes.endswith("done; wait")


def test_the_readme_keeps_the_quick_start_first():
    readme = [c for c, doc in COMMAND_DOCS.items() if doc == "README.md"]
    assert readme[:2] == ["pip install -e . && python launch/train.py --config=experiments/demo.py --workdir=runs/demo",
                          'pip install -e ".[test]" && python -m pytest -n 2'], readme[:2]


# ---------------------------------------------------------------------------- the README and its long form

README_MAX_LINES = 480  # a newcomer's read (aim: ~400); long tables and measurements go to experiments/results/
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), images too


def _prose(path: Path) -> str:
    """The Markdown of ``path`` without fenced code blocks (a ``# comment`` there is no heading, ``[0](x)`` no
    link) and without inline code."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation but - and _ dropped, spaces to
    hyphens (inline code counts by its text)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _local_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", target)]


def _target(doc: Path, link: str) -> Path:
    target = link.partition("#")[0]
    return (doc.parent / target).resolve() if target else doc.resolve()


def test_the_readme_is_short_and_one_click_from_its_long_form():
    """README.md stays a short read; each page of experiments/results/ (the moved tables, measurements and their
    commands) is linked from it, starts with a title and links back."""
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines: move long material to experiments/results/ "
                                       f"and link it (aim: ~400)")
    assert len(DOCS) > 1, f"no long-form pages in {RESULTS}"
    linked = {_target(README, link) for link in _local_links(README)}
    for page in DOCS[1:]:
        assert page.resolve() in linked, f"README.md links no {doc_name(page)}"
        assert page.read_text().startswith("# "), f"{doc_name(page)}: no one-line title first"
        assert README.resolve() in {_target(page, link) for link in _local_links(page)}, \
            f"{doc_name(page)}: no link back to README.md"


@pytest.mark.parametrize("doc", DOCS, ids=doc_name)
def test_every_link_leads_somewhere(doc):
    """Every relative link (and image) of the README and its pages names a file or folder that exists, and every
    #anchor a heading of its file."""
    for link in _local_links(doc):
        anchor = link.partition("#")[2]
        path = _target(doc, link)
        assert path.exists(), f"{doc_name(doc)}: [..]({link}): no {path}"
        if anchor:
            assert anchor in _anchors(path), f"{doc_name(doc)}: [..]({link}): no such heading in {path.name}"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=_command_id)
def test_readme_command(command, runs):
    reason = why_not_run(command)
    if reason:
        runs.check_flags(command)
        pytest.skip(f"not run: {reason}" + ("; its flags parse" if INVOCATION.search(command) else ""))
    reason = _needs_missing_weights(command)
    if reason:
        pytest.skip(reason)
    here = as_run_here(command)
    proc, workspace = runs.run(here, trained_run(runs) if reads_a_trained_run(command) else None)
    check_outputs(here, proc, workspace)


# ----------------------------------------------------------------------- every experiment config on two folders

EXPERIMENTS = sorted(p.relative_to(REPO).as_posix() for p in [*(REPO / "experiments").glob("*.py"),
                                                              *(REPO / "experiments" / "quality").glob("*.py")]
                     if "def get_config" in p.read_text())


def _run_by_readme_on_folders(experiment: str) -> str | None:
    """The README command that already trains ``experiment`` on --source/--target folders, if one does."""
    for command in COMMANDS:
        for script, flags, _ in invocations(command):
            config = flags.get("config", "experiments/wespe_plus.py")  # launch/train.py's default
            if script == "train" and config == experiment and flags.get("source") and not why_not_run(command):
                return command
    return None


@cache
def _has_vgg_weights(experiment: str) -> bool:
    return runpy.run_path(str(REPO / experiment))["get_config"]().vgg_weights is not None


def experiment_command(experiment: str) -> str:
    """launch/train.py with ``experiment`` on the workspace's phone_dir and dslr_dir, as the README's commands
    give it: with the VGG-19 file when the config names none."""
    weights = [] if _has_vgg_weights(experiment) else ["--config.vgg_weights=imagenet-vgg-verydeep-19.mat"]
    return " ".join(["python launch/train.py", f"--config={experiment}", "--source=phone_dir", "--target=dslr_dir",
                     "--workdir=runs/x", *weights, *TRAIN_TINY])


def test_every_experiment_config_is_found():
    assert {"experiments/demo.py", "experiments/wespe_plus.py", "experiments/quality/dped_paired.py"} <= set(
        EXPERIMENTS)
    assert "experiments/quality/unseen_camera.py" not in EXPERIMENTS  # a script of its own, not a config


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_config_trains_on_user_folders(experiment, runs):
    """Each config on --source/--target folders ends with exit 0, trained on those folders (not on built-in or
    DPED-layout data the config names). A config a README command already trains on two folders is not run
    twice. experiments/demo.py here is the README quick start's invitation: the demo's recipe on your folders."""
    readme = _run_by_readme_on_folders(experiment)
    if readme:
        pytest.skip(f"run by the README command {_command_id(readme)!r}")
    command = experiment_command(experiment)
    proc, workspace = runs.run(command)
    check_outputs(command, proc, workspace)
    report = json.loads((workspace / "runs" / "x" / "data_report.json").read_text())
    assert Path(report["source"]["folder"]).name == "phone_dir", report["source"]
    assert Path(report["target"]["folder"]).name == "dslr_dir", report["target"]
    if experiment == "experiments/demo.py":  # its end-of-run report is on the built-in photos only
        assert not (workspace / "runs" / "x" / "demo_result.json").exists()
        assert "no demo_result.json" in proc.stderr

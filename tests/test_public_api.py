"""The package's public surface: every name in ``wespe.__all__`` resolves to the object its owning module defines,
no name shadows a module, ``import wespe`` loads nothing heavy, and the README's layout lists the tree as it is."""

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import wespe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", wespe.__all__)
def test_each_public_name_is_its_owners(name):
    value = getattr(wespe, name)
    owner = importlib.import_module(f"wespe.{wespe._OWNERS[name]}")
    assert value is getattr(owner, name)
    assert not isinstance(value, types.ModuleType)
    assert not (REPO / "wespe" / f"{name}.py").exists(), f"wespe.{name} would shadow the module wespe/{name}.py"


def test_user_level_calls_are_public():
    for name in ("run_training", "load_generator", "enhance", "enhance_files", "evaluate", "save_generator",
                 "wespe_plus", "Generator", "make_train_step"):
        assert name in wespe.__all__
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        wespe.no_such_thing  # noqa: B018


def test_import_is_cheap():
    """``import wespe`` imports none of the heavy libraries; enhancing photos does not load orbax or grain."""
    code = ("import sys, wespe; heavy = [m for m in ('jax', 'orbax', 'grain', 'optax') if m in sys.modules]; "
            "assert not heavy, heavy; import wespe.inference.file_enhancement, wespe.inference.loading; "
            "assert 'orbax' not in sys.modules and 'grain' not in sys.modules, 'inference pulled in training'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_readme_layout_lists_every_module():
    """Each module of ``wespe/`` and its packages appears in the README's layout tables, by its path under
    ``wespe/``, and nothing else does."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`((?:\w+/)?\w+\.py)`", section.split("`launch/`", 1)[0]))
    package = REPO / "wespe"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert listed == modules, (f"missing from the README layout: {sorted(modules - listed)}; "
                               f"listed but not in wespe/: {sorted(listed - modules)}")


def test_packages_import_only_downwards():
    """core <- inference <- training <- evaluation: no module imports from a package above its own (a module-level
    or deferred import alike), so each package can be read, and used, without those above it."""
    import ast
    floor = {"": 0, "inference": 1, "training": 2, "evaluation": 3}
    package = REPO / "wespe"
    wrong = []
    for path in package.rglob("*.py"):
        own = path.relative_to(package).parts[0] if len(path.relative_to(package).parts) > 1 else ""
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "wespe" and len(parts) > 1 and parts[1] in floor and floor[parts[1]] > floor[own]:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong

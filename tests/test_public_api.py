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
            "assert not heavy, heavy; import wespe.file_enhancement, wespe.generators; "
            "assert 'orbax' not in sys.modules and 'grain' not in sys.modules, 'inference pulled in training'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_readme_layout_lists_every_module():
    """Each ``wespe/*.py`` module appears in the README's layout section with its job, and nothing else does."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(\w+)\.py`", section.split("`launch/`", 1)[0]))
    modules = {p.stem for p in (REPO / "wespe").glob("*.py") if p.stem != "__init__"}
    assert listed == modules, (f"missing from the README layout: {sorted(modules - listed)}; "
                               f"listed but not in wespe/: {sorted(listed - modules)}")

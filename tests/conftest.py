import os

# Tests run on CPU everywhere (CI has no accelerator); multi-device tests set their own flags in subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# wespe.conv's thresholds, not per-shape measurement (slow for tests that train; tests/test_conv_tuning.py has it).
os.environ.setdefault("WESPE_CONV_CHOICE", "heuristic")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (minutes each) run first: pytest-xdist hands tests out in collection order, so a
    long test collected last would run alone at the end and stretch the wall time of ``pytest -n 2``."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order

import os

# Tests run on CPU everywhere (CI has no accelerator); multi-device tests set their own flags in subprocesses.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

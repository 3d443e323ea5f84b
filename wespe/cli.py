"""What the command-line entry points share: :func:`run` (absl's ``app.run`` with wespe's one-line errors and exit
statuses, see :mod:`wespe.errors`) and the --config flag with a one-line error for a key that does not exist (with
the closest valid one), instead of a traceback from inside ml_collections."""

from __future__ import annotations

import difflib
import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from wespe import config as configs
from wespe import errors, host_malloc


def config_keys(config=None) -> list[str]:
    """Every dotted leaf key of ``config`` (default: :func:`wespe.config.base_config`)."""
    config = configs.base_config() if config is None else config
    keys = []
    for key, value in config.items():
        if hasattr(value, "items"):
            keys += [f"{key}.{k}" for k in config_keys(value)]
        else:
            keys.append(key)
    return keys


def config_overrides(argv: list[str], flag: str = "config") -> list[str]:
    """The dotted keys of the ``--config.<key>=<value>`` (or ``--config.<key> <value>``) arguments in ``argv``."""
    prefix = f"--{flag}."
    return [arg[len(prefix):].split("=", 1)[0] for arg in argv[1:] if arg.startswith(prefix)]


def config_file_argument(argv: list[str], flag: str = "config") -> str | None:
    """The file given as ``--config=<file>`` or ``--config <file>`` in ``argv`` (the last one), or None."""
    path = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith(f"--{flag}="):
            path = arg.split("=", 1)[1]
        elif arg == f"--{flag}" and i + 1 < len(argv):
            path = argv[i + 1]
    return path


def unknown_key_message(key: str, keys: list[str], flag: str = "config") -> str:
    """One line: the unknown key and the closest valid ones."""
    section, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    if siblings:  # the section exists ("generator.widht"): a misspelt leaf
        close = [f"{section}.{k}" if section else k for k in difflib.get_close_matches(leaf, siblings, n=2)]
    else:  # a misspelt section ("generatr.width")
        close = difflib.get_close_matches(key, keys, n=2, cutoff=0.8)
    if not close:  # a leaf without its section ("width")
        close = [k for k in keys if k.rpartition(".")[2] == leaf][:2]
    hint = f"; did you mean {' or '.join(f'--{flag}.{k}' for k in close)}?" if close else \
        "; every key is documented where base_config() in wespe/config.py sets it"
    return f"--{flag}.{key}: unknown config key{hint}"


def define_config_flag(default: str, help_text: str, flag: str = "config"):
    """``config_flags.DEFINE_config_file`` (locked config), which parses the ``--config.<key>`` overrides as it is
    defined; an override naming a key the config does not have ends the program with one ``error:`` line naming
    the key and the closest valid keys, exit status 2 (as absl's own flag errors)."""
    path = config_file_argument(sys.argv, flag)
    if path is not None and not Path(path).is_file() and not Path(path.rpartition(":")[0] or path).is_file():
        print(f"error: --{flag}={path}: no such config file (a Python file with get_config(), e.g. "
              "experiments/demo.py)", file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)
    try:
        return config_flags.DEFINE_config_file(flag, default, help_text, lock_config=True)
    except (AttributeError, KeyError):
        keys = config_keys()
        unknown = [k for k in config_overrides(sys.argv, flag) if k not in keys]
        if not unknown:
            raise
        print(f"error: {unknown_key_message(unknown[0], keys, flag)}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad, missing or conflicting flag is one ``error: ...`` line and exit status 2
    (absl's own parser prints "FATAL Flags parsing error" and exits 1, the status of a failed job)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)


def configure_logging() -> None:
    """wespe's own INFO messages on the console (process 0 only: the others say only warnings and errors);
    other libraries' (orbax logs every save and restore) only WARNING+, unless ``--verbosity`` was given on the
    command line. Call after ``parallel.initialize_distributed``."""
    import jax
    from absl import logging as absl_logging
    chosen = flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    if not chosen:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("wespe").setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    if not logging.getLogger().handlers:  # outside absl.app: give the messages somewhere to go
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


def start(argv: list[str], *, takes_inputs: bool = False, tune_malloc: bool = True) -> list[str]:
    """The first steps of a single-process entry point's ``main``: glibc's allocator tuned (``tune_malloc``;
    before JAX starts its threads: freed memory is reused, not re-faulted), no positional arguments unless the
    command ``takes_inputs`` (then at least one), logging as :func:`configure_logging`. Returns the positional
    arguments. (``launch/train.py`` joins the other processes first and calls :func:`configure_logging` itself.)"""
    if tune_malloc:
        host_malloc.tune()
    inputs = argv[1:]
    if takes_inputs and not inputs:
        raise app.UsageError("give at least one input photo or folder")
    if not takes_inputs and inputs:
        raise app.UsageError(f"unexpected arguments: {' '.join(inputs)}")
    configure_logging()
    return inputs


def run(main) -> None:
    """``app.run(main)`` for a wespe entry point: flags parsed by :func:`parse_flags`; inside ``main`` a
    :class:`wespe.errors.UserError` or ``app.UsageError`` is one line and exit 2, a diverged run exit 3, an OS or
    checkpoint failure one line and exit 1 (:func:`wespe.errors.cli_errors`); ``main``'s return value is the
    exit status."""
    def guarded(argv):
        with errors.cli_errors():
            try:
                return main(argv)
            except app.UsageError as e:  # wrong positional arguments: a user error like any other
                raise errors.UserError(str(e)) from e
    app.run(guarded, flags_parser=parse_flags)

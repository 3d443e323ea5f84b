"""What the command-line entry points share: :func:`run` (absl's ``app.run`` with wespe's one-line errors and exit
statuses, see :mod:`wespe.errors`) and the --config flag (:func:`define_config_flag`), whose mistakes are one
``error:`` line and exit status 2 instead of a traceback from inside ml_collections: a config file that is missing,
does not import or has no working ``get_config()``; a ``--config.<key>`` that the config does not have (with the
closest valid key); a value of the wrong type or outside the range the key allows (:func:`wespe.config.validate`).
"""

from __future__ import annotations

import difflib
import logging
import re
import sys

import ml_collections
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


def config_override_values(argv: list[str], flag: str = "config") -> dict[str, str | None]:
    """The ``--config.<key>=<value>`` (``--config.<key> <value>``, ``--noconfig.<key>``) arguments in ``argv``:
    dotted key -> the value as typed after ``=`` (None in the other forms); the last one of a key wins."""
    override = re.compile(rf"-{{1,2}}(?:no)?{re.escape(flag)}\.([^=]+)(?:=(.*))?", re.DOTALL)
    values: dict[str, str | None] = {}
    for arg in argv[1:]:
        match = override.fullmatch(arg)
        if match:
            values.pop(match[1], None)  # config_flags' order: where the last one stands
            values[match[1]] = match[2]
    return values


def config_overrides(argv: list[str], flag: str = "config") -> list[str]:
    """The dotted keys of the ``--config.<key>=<value>`` (or ``--config.<key> <value>``) arguments in ``argv``."""
    return list(config_override_values(argv, flag))


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


def load_config_file(argument: str, flag: str = "config"):
    """``get_config()`` of the file given as ``--config=<file>`` (or config_flags' ``<file>:<argument>``, which
    passes ``<argument>`` to it); any failure in the file is one :class:`wespe.errors.UserError` naming it."""
    path, *arguments = argument.split(":", 1)  # as config_flags splits it
    config = errors.call_python_file(path, "get_config", f"--{flag}", what="config", example="experiments/demo.py",
                                     args=arguments)
    if not isinstance(config, ml_collections.ConfigDict):
        raise errors.UserError(f"--{flag}={argument}: get_config() returned a {type(config).__name__}, not an "
                               "ml_collections.ConfigDict (start from a preset in wespe/config.py)")
    return config


def check_config_arguments(argv: list[str], default: str, flag: str = "config") -> None:
    """The config file (``--config`` in ``argv``, else ``default``) loads, and every ``--config.<key>`` names a
    key of the config that file returns; otherwise a :class:`wespe.errors.UserError` naming the file or key."""
    keys = config_keys(load_config_file(config_file_argument(argv, flag) or default, flag))
    unknown = [key for key in config_overrides(argv, flag) if key not in keys]
    if unknown:
        raise errors.UserError(unknown_key_message(unknown[0], keys, flag))


def config_value_message(error: configs.ConfigError, argv: list[str], flag: str = "config") -> str:
    """``error`` as the command line gave its key: ``--config.<key>=<as typed>: <requirement>`` for an override,
    prefixed with the config file for a value that file set."""
    typed = config_override_values(argv, flag)
    if error.key is not None and error.key in typed:
        value = typed[error.key] if typed[error.key] is not None else error.value
        return f"--{flag}.{error.key}={value}: {error.requirement}"
    path = config_file_argument(argv, flag)
    return f"--{flag}={path}: {error}" if path is not None and error.key is not None else str(error)


# The config flags defined by define_config_flag: parse_flags validates their values.
_CONFIG_FLAGS: list[str] = []


def define_config_flag(default: str, help_text: str, flag: str = "config"):
    """``config_flags.DEFINE_config_file`` (locked config), checked first: a config file that is missing or broken,
    or an override naming a key the config does not have, ends the program with one ``error:`` line (the key's
    closest valid keys suggested), exit status 2. (config_flags applies the overrides as the flag is defined
    when no ``--config`` is given, or as flags are parsed when one is: both would end in a traceback.) The
    values are checked once parsed (:func:`parse_flags`)."""
    try:
        check_config_arguments(sys.argv, default, flag)
    except errors.UserError as e:
        errors.exit_on_user_error(e)
    _CONFIG_FLAGS.append(flag)
    return config_flags.DEFINE_config_file(flag, default, help_text, lock_config=True)


def validate_config_flags(argv: list[str]) -> None:
    """:func:`wespe.config.validate` on every parsed config flag, before anything starts; a bad value is one
    ``error:`` line naming the ``--config.<key>=<value>`` and its valid range, exit status 2."""
    for flag in _CONFIG_FLAGS:
        try:
            configs.validate(flags.FLAGS[flag].value)
        except configs.ConfigError as e:
            errors.exit_with_line(config_value_message(e, argv, flag), errors.EXIT_USER_ERROR, e)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad, missing or conflicting flag is one ``error: ...`` line and exit status 2
    (absl's own parser prints "FATAL Flags parsing error" and exits 1, the status of a failed job)."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)
    validate_config_flags(argv)
    return remaining


def set_console_log_levels() -> None:
    """wespe's own INFO messages on; other libraries' INFO lines off (JAX's "Unable to initialize backend
    'tpu'", orbax's every save and restore: absl's ``app.run`` turns them on once flags are parsed), unless
    ``--verbosity`` was given on the command line."""
    from absl import logging as absl_logging
    chosen = flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
    if not chosen:
        absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("wespe").setLevel(logging.INFO)


def configure_logging() -> None:
    """:func:`set_console_log_levels`, and wespe's own INFO messages on process 0 only (the others say only
    warnings and errors). Call after ``parallel.initialize_distributed``."""
    import jax
    set_console_log_levels()
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
        set_console_log_levels()  # before main: a user error is then its one line, no library chatter first
        with errors.cli_errors():
            try:
                return main(argv)
            except app.UsageError as e:  # wrong positional arguments: a user error like any other
                raise errors.UserError(str(e)) from e
    app.run(guarded, flags_parser=parse_flags)

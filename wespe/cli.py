"""What the command-line entry points share: the --config flag with a one-line error for a key that does not
exist (with the closest valid one), instead of a traceback from inside ml_collections."""

from __future__ import annotations

import difflib
import sys

from ml_collections import config_flags

from wespe import config as configs


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
        "; the keys are listed at the top of wespe/config.py"
    return f"--{flag}.{key}: unknown config key{hint}"


def define_config_flag(default: str, help_text: str, flag: str = "config"):
    """``config_flags.DEFINE_config_file`` (locked config), which parses the ``--config.<key>`` overrides as it is
    defined; an override naming a key the config does not have ends the program with one ``error:`` line naming
    the key and the closest valid keys, exit status 2 (as absl's own flag errors)."""
    try:
        return config_flags.DEFINE_config_file(flag, default, help_text, lock_config=True)
    except (AttributeError, KeyError):
        keys = config_keys()
        unknown = [k for k in config_overrides(sys.argv, flag) if k not in keys]
        if not unknown:
            raise
        print(f"error: {unknown_key_message(unknown[0], keys, flag)}", file=sys.stderr)
        sys.exit(2)

"""Settings from ``OSUPGRADE_*`` environment variables, under the command line.

Precedence, for every setting that has a variable: a flag given on the command line,
then the environment variable, then the built-in default. The variable of a flag is its
name in capitals with ``OSUPGRADE_`` in front (``--db`` -> ``OSUPGRADE_DB``,
``--auth-token-file`` -> ``OSUPGRADE_AUTH_TOKEN_FILE``). Secrets belong here or in files
rather than on the command line, which every local user can read in the process list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

PREFIX = "OSUPGRADE_"


def env_name(flag: str) -> str:
    """The environment variable of ``flag`` (``--pg-schema`` -> ``OSUPGRADE_PG_SCHEMA``)."""
    return PREFIX + flag.lstrip("-").replace("-", "_").upper()


def env_value(flag: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value when set and not empty, else None."""
    value = (os.environ if environ is None else environ).get(env_name(flag), "")
    return value or None


def env_help(flag: str, text: str) -> str:
    """``text`` for ``--help``, naming the variable that can stand in for the flag."""
    return f"{text} [env {env_name(flag)}]"

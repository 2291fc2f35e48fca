"""A hint names only options the failing command has.

Errors are raised deep in the library, which serves several commands: "lower --min-ratio /
--round-to" fits ``search``, but ``pick`` and ``ofa extract`` choose within a space that was
fixed when their input was made. :func:`fit_to_command` finds the options a message names
outside a quoted command (``autoprune search --run-dir ...`` names search's own) that the
failing command lacks, and says whose options they are: the command that made its input.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MADE_BY", "command_options", "current_context", "fit_to_command", "foreign_options",
           "misquoted_options"]

# The command that made each command's input, what running it again means, and why.
MADE_BY = {
    "pick": ("search", "a new search", "pick chooses among this run's trials"),
    "recover": ("search", "a new search", "recover fine-tunes this run's choice"),
    "export": ("search", "a new search", "export writes this run's choice"),
    "latency": ("search", "a new search", "--config measures what that run chose"),
    "ofa extract": ("ofa train", "a new supernet", "its widths were fixed when it was trained"),
    "ofa front": ("ofa train", "a new supernet", "its widths were fixed when it was trained"),
}

_OPTION = re.compile(r"(?<![\w./-])--[a-z][a-z0-9-]*")
# "autoprune <command> ..." up to the end of its phrase: the options in it are that command's.
_QUOTED = re.compile(r"autoprune ((?:ofa )?[a-z]+)\b((?:[^;()`,.]|[,.](?=\S))*)")


def current_context() -> Any:
    """The click context of the command running now (None outside one). Typer 0.2x runs on a
    copy of click of its own (``typer._click``), older typer on click itself."""
    try:
        from typer._click.globals import get_current_context  # noqa: PLC0415
    except ImportError:  # typer on click itself
        from click import get_current_context  # noqa: PLC0415
    return get_current_context(silent=True)


def command_options(root: Any, path: str) -> set[str]:
    """The long options of ``autoprune <path>`` (e.g. ``"ofa extract"``) under the program's
    ``root`` command; empty if there is no such command."""
    command = root
    for name in path.split():
        command = getattr(command, "commands", {}).get(name)
    if command is None:
        return set()
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _quoted(message: str) -> list[tuple[str, list[str]]]:
    """Each ``autoprune <command> ...`` the message quotes, with the options quoted with it."""
    return [(m.group(1), _OPTION.findall(m.group(2))) for m in _QUOTED.finditer(message)]


def foreign_options(message: str, root: Any, path: str) -> list[str]:
    """The options ``message`` names that ``autoprune <path>`` does not have, unless the
    message also quotes them with their command (``autoprune search --round-to ...``)."""
    quoted = {o for _, options in _quoted(message) for o in options}
    own = command_options(root, path) | {"--help"} | quoted
    bare = _QUOTED.sub(" ", message)
    return list(dict.fromkeys(o for o in _OPTION.findall(bare) if o not in own))


def misquoted_options(message: str, root: Any) -> list[str]:
    """Options the message quotes with a command that does not have them."""
    return [f"autoprune {cmd} {o}" for cmd, options in _quoted(message) for o in options
            if o not in command_options(root, cmd) | {"--help"}]


def fit_to_command(message: str) -> str:
    """``message``, with the options it names that the running command lacks quoted with the
    command that made its input (``--round-to`` in pick: ``autoprune search --round-to``)."""
    root, path = _running()
    if root is None or not path:
        return message
    foreign = foreign_options(message, root, path)
    maker = MADE_BY.get(path)
    if not foreign or maker is None or not set(foreign) <= command_options(root, maker[0]):
        return message
    return (f"{message.rstrip('. ')} (in {maker[1]}: autoprune {maker[0]} "
            f"{' '.join(foreign)} ...; {maker[2]})")


def _running() -> tuple[Any, str]:
    """The program's root command and the path of the command running now (``"pick"``,
    ``"ofa extract"``), from click's context; ``(None, "")`` outside a command."""
    ctx, names = current_context(), []
    while ctx is not None and ctx.parent is not None:  # the root is the program itself
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return (ctx.command if ctx is not None else None), " ".join(reversed(names))

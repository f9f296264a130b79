"""CLI verbs, one module per pipeline stage; ``register_all`` attaches them to the group."""

from __future__ import annotations

import click

from qfa_deploy.commands.options import refuse_empty_paths
from qfa_deploy.commands.user_errors import user_errors

__all__ = ["register_all"]


def register_all(group: click.Group) -> None:
    from qfa_deploy.commands import arch_cmds, convert_cmds, deploy_cmds, export_cmds, lut_cmds, search_cmds, train_cmds

    for module in (arch_cmds, train_cmds, search_cmds, export_cmds, deploy_cmds, lut_cmds, convert_cmds):
        for command in module.COMMANDS:
            _wrap(command)
            group.add_command(command)


def _wrap(command: click.Command) -> None:
    """User errors become one line on stderr, in subcommands of groups too: the one place that wraps
    (and that makes every path refuse an empty string)."""
    refuse_empty_paths(command)
    if command.callback is not None:
        command.callback = user_errors(command.callback)
    for sub in getattr(command, "commands", {}).values():
        _wrap(sub)

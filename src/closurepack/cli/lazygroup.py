"""A click group that imports a command's module only when that command is wanted.

Click's documented "lazily loading subcommands" pattern: the group knows each command by
name and ``module:attribute``; :meth:`LazyGroup.get_command` imports the module on first use.
A re-push of an unchanged image (``closurepack build -o docker://...``) then loads the build
command alone; ``--help`` lists every command, loading them all, in click's (sorted) order."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import click

__all__ = [
    "LazyGroup",
]


class LazyGroup(click.Group):
    """A group whose commands, given as ``{name: "package.module:attribute"}``, are imported
    when first looked up."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self._lazy_commands:
            self.add_command(self._load(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def all_commands(self) -> dict[str, click.Command]:
        """Every command by name, all imported (for the tests and docs that walk them)."""
        ctx = click.Context(self)
        found = {name: self.get_command(ctx, name) for name in self.list_commands(ctx)}
        return {name: command for name, command in found.items() if command is not None}

    def _load(self, cmd_name: str) -> click.Command:
        module_name, _, attribute = self._lazy_commands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            # a programming error in the table below, never the user's input
            raise TypeError(f"{module_name}:{attribute} is not the command {cmd_name!r}")
        return command

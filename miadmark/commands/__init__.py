"""Subcommands of the `miadmark` CLI, one module each."""

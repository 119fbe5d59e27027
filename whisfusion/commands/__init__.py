"""Subcommands of the `whisfusion` command line."""

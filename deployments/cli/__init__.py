"""The `rlhf` command: every subcommand (run, validate, train, serve, ingest), one parser, one exit-code table.

This is the top layer (deployments -> flows -> tasks -> rlhf_core). `rlhf --help` lists the subcommands and the
exit statuses; `deployments.cli.parser` holds both.
"""

from deployments.cli.parser import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

"""Command plugins: subcommands added to the ``hcibench`` CLI."""

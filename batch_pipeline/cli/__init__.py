"""`batch-pipeline`, the command line: one module per subcommand group, each with `register(subparsers)`."""

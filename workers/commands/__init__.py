"""The operator's commands: the CLI's table of contents and the modules that own sub-commands."""

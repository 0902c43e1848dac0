"""`python -m puqdeploy` runs the CLI, the same as the `puqdeploy` entry point."""

from puqdeploy.cli import entry

entry()

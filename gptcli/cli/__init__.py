"""The command line: the Typer app (flags only), the process around a command (entry),
shared options, and the generated reference (clidoc). Imports nothing heavy."""

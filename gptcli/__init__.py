"""gptcli: train a small GPT on your own text and generate from it, from the command line."""

__version__ = "0.1.0"

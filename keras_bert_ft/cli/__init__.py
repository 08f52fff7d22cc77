"""kbft: the command line, a thin argparse layer over the functions notebooks call."""

from keras_bert_ft.cli.app import build_parser, console, main

__all__ = ["build_parser", "console", "main"]

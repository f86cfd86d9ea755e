"""The parameter type of every path the commands take (runs, inputs, output files and folders)."""
from __future__ import annotations

import os

import click


class UserPath(click.Path):
    """``click.Path`` with a leading ``~`` expanded to the home folder, as the data options expand it
    (``convrnn.fields.absolute_path``): a shell leaves ``~`` alone inside quotes and after ``=``
    (``--out=~/f1.onnx``), and the path would otherwise name a folder called ``~``."""

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)

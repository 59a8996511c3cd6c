"""``python -m lncr.cli`` (the same as ``python -m lncr``)."""

from lncr.cli import app

app()

"""``python -m lncr`` (what ``torchrun -m lncr train …`` runs on every rank)."""

from lncr.cli import app

app()

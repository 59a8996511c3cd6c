"""The errors lncr explains to its users, and what each means for the exit code.

Every error a user can cause or meet derives from :class:`LncrError`; its message names the
file, row, setting or value and the fix. The command line turns any of them into one red line
(``lncr.cli.common.ErrorBoundary``) with the exit code of its kind:

- :class:`BadInput` (exit 2): the study, a table, a slide, a setting or an option is wrong;
- :class:`WorkFailed` (exit 1): the input was fine but the work did not finish (a diverged
  run, a sweep with no finished unit, slides that failed to tile).

They also derive from the builtin they replace (``ValueError``, ``RuntimeError``), so code that
catches those keeps working.
"""

from __future__ import annotations


class LncrError(Exception):
    """A failure lncr explains in one message."""

    exit_code = 1


class BadInput(LncrError, ValueError):
    """The user's input is wrong: exit code 2."""

    exit_code = 2


class WorkFailed(LncrError, RuntimeError):
    """The work could not be finished: exit code 1."""

    exit_code = 1

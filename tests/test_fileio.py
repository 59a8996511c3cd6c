"""Describe atomic writes: per-process temporary names, and the half files of dead processes
removed when the same file is written again."""

from __future__ import annotations

import os
import subprocess
import sys

from lncr.fileio import atomic_write_text, partial_path


def a_dead_pid() -> int:
    """The process id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class DescribeAtomicWrites:
    def it_writes_under_a_name_of_its_own_process(self, tmp_path):
        assert partial_path(tmp_path / "a.csv").name == f".a.csv.{os.getpid()}.partial"

    def it_removes_what_dead_writers_left_and_keeps_what_live_ones_write(self, tmp_path):
        dead = tmp_path / f".a.csv.{a_dead_pid()}.partial"
        old_style = tmp_path / ".a.csv.partial"
        live = tmp_path / f".a.csv.{os.getppid()}.partial"  # a process that is running
        other = tmp_path / f".b.csv.{a_dead_pid()}.partial"  # another file's: not ours
        for p in (dead, old_style, live, other):
            p.write_text("half")
        atomic_write_text(tmp_path / "a.csv", "whole")
        assert (tmp_path / "a.csv").read_text() == "whole"
        assert not dead.exists() and not old_style.exists()
        assert live.exists() and other.exists()

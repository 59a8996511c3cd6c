"""Describe `make install`: the pinned builds by default, another CUDA build of the same torch
on request (TORCH_INDEX), the rest of the pins either way. A dry run (`make -n`) in a fresh
virtual-environment folder: the commands, not a download."""

from __future__ import annotations

import subprocess

from conftest import REPO


def dry_run(tmp_path, *variables: str) -> list[str]:
    out = subprocess.run(["make", "-n", "install", f"VENV={tmp_path / 'venv'}", *variables],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return out.replace("\\\n", " ").splitlines()


class DescribeInstall:
    def it_installs_the_pinned_builds_by_default(self, tmp_path):
        lines = dry_run(tmp_path)
        lncr = [line for line in lines if "-e '.[test,demo]'" in line]
        assert lncr and "-c constraints.txt" in lncr[0]
        assert not any("--index-url" in line for line in lines)

    def it_takes_torch_from_another_index_and_keeps_the_other_pins(self, tmp_path):
        index = "https://download.pytorch.org/whl/cu126"
        lines = dry_run(tmp_path, f"TORCH_INDEX={index}")
        torch = [i for i, line in enumerate(lines) if f"--index-url {index}" in line]
        assert torch and "grep -E '^(torch|torchvision)==' constraints.txt" in lines[torch[0]]
        local = str(tmp_path / "venv" / "constraints-local.txt")
        pins = [i for i, line in enumerate(lines) if line.startswith("grep -v")]
        assert pins and lines[pins[0]].endswith(f"> {local}")
        lncr = [i for i, line in enumerate(lines) if "-e '.[test,demo]'" in line]
        assert lncr and f"-c {local}" in lines[lncr[0]]
        assert torch[0] < pins[0] < lncr[0]  # torch first: pip keeps it for lncr's requirement
        # The pins without torch and torchvision hold everything else.
        pinned = [p for p in (REPO / "constraints.txt").read_text().splitlines() if "==" in p]
        kept = subprocess.run(["grep", "-v", "-E", "^(torch|torchvision)==",
                               str(REPO / "constraints.txt")], capture_output=True,
                              text=True).stdout.splitlines()
        assert len([k for k in kept if "==" in k]) == len(pinned) - 2

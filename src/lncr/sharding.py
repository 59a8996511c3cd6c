"""Work split over machines: shard *i* of *n* takes every *n*-th item from the *i*-th
(counting from 0), for ``lncr tile --shard`` and ``lncr embed --shard``."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from lncr.errors import BadInput

T = TypeVar("T")

#: Seconds a finished shard waits for the output folder before merging what every shard did
#: (another shard may hold it for the same reason, or be checking the parts).
MERGE_WAIT = 120.0


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0 … ``count`` − 1) of ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"`` → ``Shard(1, 4)``; a clear error for anything else."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not match or not 0 <= int(match[1]) < int(match[2]):
            raise BadInput(f"--shard {text!r}: write i/N with 0 ≤ i < N, e.g. --shard 1/4 for "
                           "the second of four machines")
        return cls(int(match[1]), int(match[2]))

    @property
    def name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, items: Sequence[T], key: Callable[[T], Hashable]) -> list[T]:
        """The items whose key is among every ``count``-th distinct key (in order of first
        appearance) from the ``index``-th: items sharing a key stay in one shard."""
        keys = list(dict.fromkeys(key(item) for item in items))
        mine = set(keys[self.index::self.count])
        return [item for item in items if key(item) in mine]

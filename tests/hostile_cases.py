"""Tags for the hostile-input and fault tests (tests/test_hostile*.py), counted by `bench/hostile_counts.py`.

Every test there carries one kind; each collected item (every parametrised case) is one input tried,
and a test covering several scenarios in one run records how many with `record_property("cases", n)`:

- `error`: a bad input must give a clear error naming the problem and the fix (a failure: a silent or raw result);
- `safe`: a hostile input must be made harmless without an error (a failure: a silent wrong result);
- `data`: the user's files or earlier results must survive byte for byte (a failure: data lost);
- `fault`: a crash, kill or full disk must lose nothing and leave a clean rerun (a failure: data lost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

Kind = Literal["error", "safe", "data", "fault"]
KINDS: tuple[Kind, ...] = ("error", "safe", "data", "fault")
F = TypeVar("F", bound=Callable)


def case(kind: Kind) -> Callable[[F], F]:
    """Tag a test function with its kind (read from `function.hostile_kind`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown hostile case kind {kind!r}; use one of {KINDS}")

    def tag(function: F) -> F:
        function.hostile_kind = kind  # type: ignore[attr-defined]
        return function

    return tag

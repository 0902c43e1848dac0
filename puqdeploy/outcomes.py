"""What a step reports back to the queue. Four outcomes, nothing else.

- Done: the target state holds (`result` says "created", "already present", ...).
- Retry: a transient problem (connection refused, timeout, dpkg lock, E_RESTART); back off and
  try again; counts an attempt.
- Wait: an outside condition is not met yet (DNS does not point here): re-check later without
  using an attempt, until a deadline.
- Fail: permanent (E_LIMIT, invalid input, host key mismatch): terminal at once.
"""

from __future__ import annotations

from puqdeploy.frozen import frozen
from typing import Optional, Union


@frozen
class Done:
    result: str = "done"
    message: Optional[str] = None  # activity feed line; default "<label>: <result>"


@frozen
class Retry:
    error: str
    timeout: bool = False  # the attempt was killed for running too long


@frozen
class Wait:
    reason: str
    recheck_seconds: float
    deadline_seconds: float  # measured from the first wait of this task


@frozen
class Fail:
    error: str


Outcome = Union[Done, Retry, Wait, Fail]

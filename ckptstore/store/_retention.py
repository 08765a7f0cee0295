"""Retention: a policy (what to keep) -> a plan (keep / remove, with the reasons for each).

Planning is a pure function of the checkpoints' records and the policy: no I/O, no clock.
The rules combine by union: a checkpoint is kept when any rule keeps it. Two safety rules sit on
top of that:

- the newest checkpoint (highest step; the most recent of equal steps) is always kept;
- a checkpoint is removed only when at least one rule *judged* it and none kept it. ``keep_best``
  cannot judge a checkpoint that lacks its metric (or has NaN), and ``keep_tags`` never judges
  (a missing tag is no reason to remove), so a policy of only ``keep_best`` never removes a
  checkpoint without that metric, and an empty policy removes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, Union

from .._errors import InvalidArgumentError, UnsupportedFormatError

__all__ = ["Decision", "Retention", "RetentionPlan", "check_policy", "format_duration", "parse_duration", "plan"]

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"1d12h"``, ``"30m"``, ``"2w"``, ``"90s"`` -> timedelta."""
    s = text.strip().lower().replace(" ", "")
    m = _DURATION_RE.match(s)
    if not s or m is None or not any(m.groups()):
        raise InvalidArgumentError(
            f"cannot read the duration {text!r}: use a number with a unit, like 7d, 12h, 30m, 1d12h or 2w"
        )
    seconds = sum(int(g) * mult for g, mult in zip(m.groups(), _UNITS.values()) if g)
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    """The shortest ``parse_duration`` text for a whole number of seconds (``"1d12h"``)."""
    rest = int(td.total_seconds())
    if rest == 0:
        return "0s"
    out = []
    for unit, mult in _UNITS.items():
        if unit == "w":
            continue  # "14d" reads better than "2w" in listings
        n, rest = divmod(rest, mult)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidArgumentError(f"{name} must be an int of at least 1, not {v!r}")
    return v


@dataclass(frozen=True)
class Retention:
    """What to keep. Every rule is optional; rules combine by union.

    - ``keep_last``: the N newest checkpoints.
    - ``keep_best``: ``(metric, "min" | "max")`` or ``(metric, mode, K)``: the K best by a metric
      (K defaults to 1). Checkpoints without the metric are never "best" and never removed for
      that reason alone.
    - ``keep_every``: checkpoints whose step is a multiple of K.
    - ``keep_within``: checkpoints created within this time of the *newest* checkpoint
      (a timedelta or text such as ``"7d"``, ``"12h"``, ``"1d12h"``).
    - ``keep_tags``: checkpoints with any of these tags (``"pinned"`` by default).

    The newest checkpoint is always kept. JSON round trip: ``Retention.from_json(p.to_json())``.
    """

    keep_last: int | None = None
    keep_best: Union[tuple[str, str], tuple[str, str, int], None] = None
    keep_every: int | None = None
    keep_within: Union[timedelta, str, None] = None
    keep_tags: tuple[str, ...] = ("pinned",)

    def __post_init__(self) -> None:
        if self.keep_last is not None:
            _positive_int("keep_last", self.keep_last)
        if self.keep_every is not None:
            _positive_int("keep_every", self.keep_every)
        if self.keep_best is not None:
            kb = self.keep_best
            if isinstance(kb, str) or not isinstance(kb, (tuple, list)) or len(kb) not in (2, 3):
                raise InvalidArgumentError(
                    f"keep_best must be (metric, 'min' | 'max') or (metric, mode, K), not {kb!r}"
                )
            metric, mode = kb[0], kb[1]
            count = _positive_int("keep_best's K", kb[2]) if len(kb) == 3 else 1
            if not isinstance(metric, str) or not metric:
                raise InvalidArgumentError(f"keep_best needs a metric name, not {metric!r}")
            if mode not in ("min", "max"):
                raise InvalidArgumentError(f"keep_best mode must be 'min' or 'max', not {mode!r}")
            object.__setattr__(self, "keep_best", (metric, mode, count))
        if self.keep_within is not None:
            kw = self.keep_within
            td = parse_duration(kw) if isinstance(kw, str) else kw
            if not isinstance(td, timedelta) or td <= timedelta(0):
                raise InvalidArgumentError(f"keep_within must be a positive timedelta or text like '7d', not {kw!r}")
            object.__setattr__(self, "keep_within", td)
        tags = self.keep_tags
        if isinstance(tags, str):
            tags = (tags,)
        tags = tuple(tags)
        if not all(isinstance(t, str) and t for t in tags):
            raise InvalidArgumentError(f"keep_tags must be non-empty strings, not {self.keep_tags!r}")
        object.__setattr__(self, "keep_tags", tags)

    @property
    def best(self) -> tuple[str, str, int] | None:
        """``keep_best`` as (metric, mode, K), or None."""
        return self.keep_best  # type: ignore[return-value]

    @property
    def within(self) -> timedelta | None:
        return self.keep_within  # type: ignore[return-value]

    def is_empty(self) -> bool:
        """True when no rule can ever remove a checkpoint (only tags, or nothing)."""
        rules = (self.keep_last, self.keep_best, self.keep_every, self.keep_within)
        return all(r is None for r in rules)

    def describe(self) -> str:
        parts = []
        if self.keep_last is not None:
            parts.append(f"last {self.keep_last}")
        if self.best is not None:
            m, mode, k = self.best
            parts.append(f"best {k} by {m} ({mode})")
        if self.keep_every is not None:
            parts.append(f"every {self.keep_every} steps")
        if self.within is not None:
            parts.append(f"within {format_duration(self.within)} of newest")
        if self.keep_tags:
            parts.append("tags " + ",".join(self.keep_tags))
        return "keep " + ("; ".join(parts) if parts else "everything (no rule)")

    # -- JSON (the ``retention`` field of ckptstore.json) --------------------------------------
    def to_json(self) -> dict[str, Any]:
        best = None
        if self.best is not None:
            m, mode, k = self.best
            best = {"metric": m, "mode": mode, "count": k}
        return {
            "keep_last": self.keep_last,
            "keep_best": best,
            "keep_every": self.keep_every,
            "keep_within": None if self.within is None else format_duration(self.within),
            "keep_tags": list(self.keep_tags),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Retention:
        if not isinstance(data, Mapping):
            raise ValueError(f"a retention policy is a JSON object, not {type(data).__name__}")
        known = {"keep_last", "keep_best", "keep_every", "keep_within", "keep_tags"}
        unknown = sorted(set(data) - known)
        if unknown:
            # A rule from a newer ckptstore could keep checkpoints this one would delete.
            raise UnsupportedFormatError(
                f"the stored retention policy has rules this ckptstore does not know ({', '.join(unknown)}); "
                "upgrade ckptstore (pip install -U ckptstore) before applying it"
            )
        best = data.get("keep_best")
        if best is not None:
            if not isinstance(best, Mapping):
                raise ValueError(f"keep_best must be an object with metric, mode, count, not {best!r}")
            metric, mode, count = best.get("metric"), best.get("mode"), best.get("count", 1)
            if not isinstance(metric, str) or not isinstance(mode, str) or type(count) is not int:
                raise ValueError(f"keep_best needs a metric name, a mode and an int count, not {best!r}")
            best = (metric, mode, count)
        tags = data.get("keep_tags", ["pinned"])
        if not isinstance(tags, list):
            raise ValueError(f"keep_tags must be a list of strings, not {tags!r}")
        return cls(
            keep_last=data.get("keep_last"),
            keep_best=best,
            keep_every=data.get("keep_every"),
            keep_within=data.get("keep_within"),
            keep_tags=tuple(tags),
        )


class CheckpointLike(Protocol):
    """What planning needs of a checkpoint (``CheckpointInfo`` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def metrics(self) -> Mapping[str, float]: ...
    @property
    def tags(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class Decision:
    """One checkpoint's fate and every reason for it (kept: the rules that keep it; removed: how
    each rule judged it)."""

    checkpoint: Any
    keep: bool
    reasons: tuple[str, ...]

    @property
    def action(self) -> str:
        return "keep" if self.keep else "remove"


@dataclass(frozen=True)
class RetentionPlan:
    """The outcome of planning: one decision per checkpoint, oldest first."""

    policy: Retention
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def keep(self) -> list[Any]:
        return [d.checkpoint for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Any]:
        return [d.checkpoint for d in self.decisions if not d.keep]

    def reasons(self, checkpoint_id: str) -> tuple[str, ...]:
        """Why the plan keeps or removes the checkpoint with id ``checkpoint_id`` (KeyError if it
        was not planned)."""
        for d in self.decisions:
            if d.checkpoint.id == checkpoint_id:
                return d.reasons
        raise KeyError(checkpoint_id)


def _order_key(c: CheckpointLike) -> tuple[int, datetime, str]:
    return (c.step, c.created_at, c.id)


def _metric(c: CheckpointLike, name: str) -> float | None:
    v = c.metrics.get(name)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def plan(checkpoints: Sequence[CheckpointLike], policy: Retention, *, protect: Sequence[str] = ()) -> RetentionPlan:
    """Decide keep or remove for every checkpoint. Pure: the same input gives the same plan.

    ``protect``: ids that are kept whatever the rules say (reason "protected"); used by the
    disk-space guard to keep the newest *existing* checkpoint while a new one is being saved.
    """
    cps = sorted(checkpoints, key=_order_key)
    n = len(cps)
    keep: list[list[str]] = [[] for _ in cps]
    judged: list[list[str]] = [[] for _ in cps]  # why each judging rule did not keep it
    if n:
        keep[-1].append("newest")
    protected = set(protect)
    for i, c in enumerate(cps):
        if c.id in protected:
            keep[i].append("protected")

    if policy.keep_last is not None:
        k = policy.keep_last
        for i in range(n):
            rank = n - i  # 1 = newest
            if rank <= k:
                keep[i].append(f"last {k} (#{rank})")
            else:
                judged[i].append(f"not among the last {k}")

    if policy.best is not None:
        metric, mode, k = policy.best
        have = [(i, v) for i, c in enumerate(cps) if (v := _metric(c, metric)) is not None]
        # best first; among equal values the newer one ranks higher
        have.sort(key=lambda iv: ((iv[1] if mode == "min" else -iv[1]), -iv[0]))
        for rank, (i, v) in enumerate(have, start=1):
            label = f"{metric}={v:.6g}"
            if rank <= k:
                keep[i].append(f"best {k} by {metric} ({mode}): #{rank}, {label}")
            else:
                judged[i].append(f"not among the best {k} by {metric} ({mode}): #{rank}, {label}")

    if policy.keep_every is not None:
        e = policy.keep_every
        for i, c in enumerate(cps):
            if c.step % e == 0:
                keep[i].append(f"step is a multiple of {e}")
            else:
                judged[i].append(f"step not a multiple of {e}")

    if policy.within is not None and n:
        newest = cps[-1].created_at
        w = policy.within
        text = format_duration(w)
        for i, c in enumerate(cps):
            if newest - c.created_at <= w:
                keep[i].append(f"within {text} of newest")
            else:
                judged[i].append(f"older than {text} before newest")

    if policy.keep_tags:
        wanted = set(policy.keep_tags)
        for i, c in enumerate(cps):
            hit = [t for t in c.tags if t in wanted]
            if hit:
                keep[i].append("tagged " + ",".join(sorted(set(hit))))

    decisions = []
    for i, c in enumerate(cps):
        if keep[i]:
            decisions.append(Decision(c, True, tuple(keep[i])))
        elif judged[i]:
            if policy.best is not None and _metric(c, policy.best[0]) is None:
                judged[i].append(f"no {policy.best[0]!r} metric (keep_best does not judge it)")
            decisions.append(Decision(c, False, tuple(judged[i])))
        else:
            why = "no rule applies"
            if policy.best is not None:
                why += f" (no {policy.best[0]!r} metric for keep_best)"
            decisions.append(Decision(c, True, (why,)))
    return RetentionPlan(policy=policy, decisions=tuple(decisions))


def check_policy(policy: object) -> Retention:
    """``policy`` itself when it is a ``Retention``; TypeError otherwise."""
    if not isinstance(policy, Retention):
        raise TypeError(f"a retention policy is a ckptstore.Retention, not {type(policy).__name__}")
    return policy

"""Retention planning: golden cases (action and reasons per checkpoint) and the policy's JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest

import ckptstore
from ckptstore import Retention
from ckptstore.store._retention import format_duration, parse_duration, plan

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class C:
    step: int
    hours: float = 0.0
    metrics: dict = field(default_factory=dict)
    tags: tuple = ()
    n: int = 0  # tells apart two checkpoints at one step

    @property
    def id(self) -> str:
        return f"{self.step:06d}{self.n:02d}"

    @property
    def created_at(self) -> datetime:
        return T0 + timedelta(hours=self.hours)


def run(cps, policy, **kw):
    return [(d.checkpoint.step, d.action, list(d.reasons)) for d in plan(cps, policy, **kw).decisions]


# six checkpoints an hour apart, step 0..500; losses with one missing and one NaN
SIX = [
    C(0, 0, {"loss": 3.0}),
    C(100, 1, {"loss": 1.0}, ("pinned",)),
    C(200, 2, {}),
    C(300, 3, {"loss": 0.5}),
    C(400, 4, {"loss": float("nan")}),
    C(500, 5, {"loss": 2.5, "acc": 0.9}),
]

GOLDEN = [
    pytest.param([], Retention(keep_last=3), [], id="no-checkpoints"),
    pytest.param(
        SIX,
        Retention(),
        [
            (0, "keep", ["no rule applies"]),
            (100, "keep", ["tagged pinned"]),
            (200, "keep", ["no rule applies"]),
            (300, "keep", ["no rule applies"]),
            (400, "keep", ["no rule applies"]),
            (500, "keep", ["newest"]),
        ],
        id="empty-policy-keeps-all",
    ),
    pytest.param(
        SIX,
        Retention(keep_last=2, keep_tags=()),
        [
            (0, "remove", ["not among the last 2"]),
            (100, "remove", ["not among the last 2"]),
            (200, "remove", ["not among the last 2"]),
            (300, "remove", ["not among the last 2"]),
            (400, "keep", ["last 2 (#2)"]),
            (500, "keep", ["newest", "last 2 (#1)"]),
        ],
        id="keep-last",
    ),
    pytest.param(
        SIX,
        Retention(keep_last=2),
        [
            (0, "remove", ["not among the last 2"]),
            (100, "keep", ["tagged pinned"]),
            (200, "remove", ["not among the last 2"]),
            (300, "remove", ["not among the last 2"]),
            (400, "keep", ["last 2 (#2)"]),
            (500, "keep", ["newest", "last 2 (#1)"]),
        ],
        id="keep-last-plus-pinned-by-default",
    ),
    pytest.param(
        SIX,
        Retention(keep_best=("loss", "min", 2), keep_tags=()),
        [
            (0, "remove", ["not among the best 2 by loss (min): #4, loss=3"]),
            (100, "keep", ["best 2 by loss (min): #2, loss=1"]),
            (200, "keep", ["no rule applies (no 'loss' metric for keep_best)"]),
            (300, "keep", ["best 2 by loss (min): #1, loss=0.5"]),
            (400, "keep", ["no rule applies (no 'loss' metric for keep_best)"]),
            (500, "keep", ["newest"]),
        ],
        id="keep-best-min-missing-and-nan-metric-never-removed",
    ),
    pytest.param(
        SIX,
        Retention(keep_best=("loss", "max"), keep_tags=()),
        [
            (0, "keep", ["best 1 by loss (max): #1, loss=3"]),
            (100, "remove", ["not among the best 1 by loss (max): #3, loss=1"]),
            (200, "keep", ["no rule applies (no 'loss' metric for keep_best)"]),
            (300, "remove", ["not among the best 1 by loss (max): #4, loss=0.5"]),
            (400, "keep", ["no rule applies (no 'loss' metric for keep_best)"]),
            (500, "keep", ["newest"]),
        ],
        id="keep-best-max-newest-always-kept",
    ),
    pytest.param(
        SIX,
        Retention(keep_best=("val_los", "min")),
        [
            (0, "keep", ["no rule applies (no 'val_los' metric for keep_best)"]),
            (100, "keep", ["tagged pinned"]),
            (200, "keep", ["no rule applies (no 'val_los' metric for keep_best)"]),
            (300, "keep", ["no rule applies (no 'val_los' metric for keep_best)"]),
            (400, "keep", ["no rule applies (no 'val_los' metric for keep_best)"]),
            (500, "keep", ["newest"]),
        ],
        id="misspelt-metric-removes-nothing",
    ),
    pytest.param(
        SIX,
        Retention(keep_last=1, keep_best=("loss", "min"), keep_tags=()),
        [
            (0, "remove", ["not among the last 1", "not among the best 1 by loss (min): #4, loss=3"]),
            (100, "remove", ["not among the last 1", "not among the best 1 by loss (min): #2, loss=1"]),
            (200, "remove", ["not among the last 1", "no 'loss' metric (keep_best does not judge it)"]),
            (300, "keep", ["best 1 by loss (min): #1, loss=0.5"]),
            (400, "remove", ["not among the last 1", "no 'loss' metric (keep_best does not judge it)"]),
            (500, "keep", ["newest", "last 1 (#1)"]),
        ],
        id="last-plus-best-union",
    ),
    pytest.param(
        SIX,
        Retention(keep_every=200, keep_tags=()),
        [
            (0, "keep", ["step is a multiple of 200"]),
            (100, "remove", ["step not a multiple of 200"]),
            (200, "keep", ["step is a multiple of 200"]),
            (300, "remove", ["step not a multiple of 200"]),
            (400, "keep", ["step is a multiple of 200"]),
            (500, "keep", ["newest"]),
        ],
        id="keep-every",
    ),
    pytest.param(
        SIX,
        Retention(keep_within="2h", keep_tags=()),
        [
            (0, "remove", ["older than 2h before newest"]),
            (100, "remove", ["older than 2h before newest"]),
            (200, "remove", ["older than 2h before newest"]),
            (300, "keep", ["within 2h of newest"]),
            (400, "keep", ["within 2h of newest"]),
            (500, "keep", ["newest", "within 2h of newest"]),
        ],
        id="keep-within-relative-to-newest",
    ),
    pytest.param(
        SIX,
        Retention(
            keep_last=1, keep_every=300, keep_within="1h30m", keep_best=("acc", "max"), keep_tags=("pinned", "release")
        ),
        [
            (0, "keep", ["step is a multiple of 300"]),
            (100, "keep", ["tagged pinned"]),
            (
                200,
                "remove",
                [
                    "not among the last 1",
                    "step not a multiple of 300",
                    "older than 1h30m before newest",
                    "no 'acc' metric (keep_best does not judge it)",
                ],
            ),
            (300, "keep", ["step is a multiple of 300"]),
            (400, "keep", ["within 1h30m of newest"]),
            (500, "keep", ["newest", "last 1 (#1)", "best 1 by acc (max): #1, acc=0.9", "within 1h30m of newest"]),
        ],
        id="all-rules",
    ),
    pytest.param(
        [C(10, 0), C(10, 1, n=1), C(5, 2)],
        Retention(keep_last=1),
        [
            (5, "remove", ["not among the last 1"]),
            (10, "remove", ["not among the last 1"]),
            (10, "keep", ["newest", "last 1 (#1)"]),
        ],
        id="same-step-twice-newest-wins-order-by-step",
    ),
    pytest.param(
        [C(1, 0, tags=("release",)), C(2, 1, tags=("pinned",)), C(3, 2)],
        Retention(keep_last=1, keep_tags=("release",)),
        [
            (1, "keep", ["tagged release"]),
            (2, "remove", ["not among the last 1"]),
            (3, "keep", ["newest", "last 1 (#1)"]),
        ],
        id="custom-tags-replace-pinned",
    ),
]


@pytest.mark.parametrize("cps, policy, expected", GOLDEN)
def test_golden(cps, policy, expected):
    assert run(cps, policy) == expected


def test_newest_is_kept_even_when_every_rule_rejects_it():
    cps = [C(0, 0), C(7, 1)]
    assert run(cps, Retention(keep_every=5, keep_tags=())) == [
        (0, "keep", ["step is a multiple of 5"]),
        (7, "keep", ["newest"]),
    ]


def test_protect_keeps_named_ids():
    cps = [C(1, 0), C(2, 1), C(3, 2)]
    got = run(cps, Retention(keep_last=1), protect=[cps[0].id])
    assert got[0] == (1, "keep", ["protected"])
    assert got[1][1] == "remove"


def test_ties_rank_newer_first():
    cps = [C(1, 0, {"loss": 1.0}), C(2, 1, {"loss": 1.0}), C(3, 2, {"loss": 5.0})]
    got = run(cps, Retention(keep_best=("loss", "min")))
    assert got[1] == (2, "keep", ["best 1 by loss (min): #1, loss=1"])
    assert got[0][1] == "remove"


def test_plan_is_pure_and_order_independent():
    p1 = plan(SIX, Retention(keep_last=2, keep_best=("loss", "min")))
    p2 = plan(list(reversed(SIX)), Retention(keep_last=2, keep_best=("loss", "min")))
    assert p1 == p2
    assert [c.step for c in p1.keep] == [100, 300, 400, 500]
    assert [c.step for c in p1.remove] == [0, 200]
    assert p1.reasons(SIX[0].id) == ("not among the last 2", "not among the best 1 by loss (min): #4, loss=3")


def test_policy_json_round_trip():
    p = Retention(
        keep_last=5,
        keep_best=("val_loss", "min", 2),
        keep_every=1000,
        keep_within=timedelta(days=1, hours=12),
        keep_tags=("pinned", "release"),
    )
    doc = p.to_json()
    assert doc == {
        "keep_last": 5,
        "keep_best": {"metric": "val_loss", "mode": "min", "count": 2},
        "keep_every": 1000,
        "keep_within": "1d12h",
        "keep_tags": ["pinned", "release"],
    }
    assert Retention.from_json(doc) == p
    assert Retention.from_json(Retention().to_json()) == Retention()
    assert Retention(keep_best=("a", "max")).keep_best == ("a", "max", 1)
    assert Retention(keep_within="7d") == Retention(keep_within=timedelta(days=7))
    with pytest.raises(AttributeError):
        p.keep_last = 3  # frozen


def test_unknown_rule_from_newer_version_is_refused():
    with pytest.raises(ckptstore.UnsupportedFormatError, match="keep_hourly"):
        Retention.from_json({"keep_last": 2, "keep_hourly": 24})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"keep_last": 0}, "keep_last"),
        ({"keep_last": True}, "keep_last"),
        ({"keep_every": -5}, "keep_every"),
        ({"keep_best": ("loss",)}, "keep_best"),
        ({"keep_best": ("loss", "lowest")}, "'min' or 'max'"),
        ({"keep_best": ("loss", "min", 0)}, "K"),
        ({"keep_best": "loss"}, "keep_best"),
        ({"keep_within": "soon"}, "duration"),
        ({"keep_within": timedelta(0)}, "positive"),
        ({"keep_tags": ("",)}, "keep_tags"),
    ],
)
def test_invalid_policies(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Retention(**kwargs)


def test_durations():
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration(" 90s ") == timedelta(seconds=90)
    assert parse_duration("1H30M") == timedelta(minutes=90)
    for bad in ("", "7", "d", "1x", "1h1d", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_duration(timedelta(days=14)) == "14d"
    assert format_duration(timedelta(hours=36, seconds=5)) == "1d12h5s"
    assert format_duration(timedelta(0)) == "0s"


def test_describe():
    assert Retention().describe() == "keep tags pinned"
    assert Retention(keep_tags=()).describe() == "keep everything (no rule)"
    assert (
        Retention(keep_last=3, keep_best=("loss", "min"), keep_within="7d").describe()
        == "keep last 3; best 1 by loss (min); within 7d of newest; tags pinned"
    )
    assert Retention().is_empty() and not Retention(keep_every=2).is_empty()


def test_nan_counts_as_missing():
    cps = [C(1, 0, {"loss": math.nan}), C(2, 1, {"loss": 2.0}), C(3, 2, {"loss": 3.0})]
    got = run(cps, Retention(keep_best=("loss", "min")))
    assert got[0] == (1, "keep", ["no rule applies (no 'loss' metric for keep_best)"])

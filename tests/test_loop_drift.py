"""Config drift classification and plain-config conversion."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import math
from pathlib import PurePosixPath

from ckptstore.adapters._drift import classify, config_drift, plain_config


def test_classes_of_common_keys() -> None:
    for k in (
        "batch_size",
        "per_device_train_batch_size",
        "model_name_or_path",
        "model.name",
        "seq_len",
        "max_seq_length",
        "block_size",
        "n_layer",
        "tokenizer",
        "dataset",
        "gradient_accumulation_steps",
    ):
        assert classify(k) == "risky", k
    for k in (
        "lr",
        "learning_rate",
        "optim.lr",
        "epochs",
        "num_train_epochs",
        "max_steps",
        "warmup_steps",
        "weight_decay",
        "eval_steps",
        "output_dir",
    ):
        assert classify(k) == "deliberate", k
    for k in ("seed", "note", "name", "project"):
        assert classify(k) == "other", k
    assert classify("note", risky=["note"]) == "risky" and classify("a.b", deliberate=["a.b"]) == "deliberate"


def test_drift_nested_added_removed_and_numbers() -> None:
    d = config_drift(
        {"a": 1, "opt": {"lr": 0.1}, "batch_size": 8, "gone": True, "same": [1, 2], "x": math.nan},
        {"a": 1.0, "opt": {"lr": 0.2}, "batch_size": 8, "new": "v", "same": (1, 2), "x": math.nan},
    )
    assert dict(d.deliberate) == {"opt.lr": (0.1, 0.2)}
    assert dict(d.other) == {"gone": (True, None), "new": (None, "v")}
    assert d.added == ("new",) and d.removed == ("gone",) and not d.risky
    assert "opt.lr 0.1 -> 0.2" in d.describe() and "gone (was True, now unset)" in d.describe()
    assert not config_drift({"a": 1}, {"a": 1}) and not config_drift(None, None)


class Mode(enum.Enum):
    fast = "fast"


@dataclasses.dataclass
class Cfg:
    lr: float = 0.1
    path: PurePosixPath = PurePosixPath("/data")
    mode: Mode = Mode.fast
    tags: tuple = ("a", "b")


def test_plain_config_of_dataclass_namespace_and_objects() -> None:
    assert plain_config(Cfg()) == {"lr": 0.1, "path": "/data", "mode": "fast", "tags": ["a", "b"]}
    assert plain_config(argparse.Namespace(x=1, y=[Cfg(lr=2.0)]))["y"][0]["lr"] == 2.0
    assert plain_config({"f": math.inf, 3: object}) == {"f": "inf", "3": repr(object)}

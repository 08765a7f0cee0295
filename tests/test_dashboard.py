"""The dashboard (issue 15): its data, the page in a real headless Chromium, the server, `diff`.

The browser tests open the page as a user would (a file:// page written by --output, or the
served page), then read what the page shows: each uPlot chart's points, the table's rows and
retention reasons, the comparison's tensors; and they fail on any console error. They skip when
Chromium is missing (scripts/setup.sh test installs it).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

import ckptstore
from ckptstore.store._retention import plan
from ckptstore.web._collect import snapshot
from tests._browser import Browser, find_chromium
from tests._dashboard_data import long_run

pytestmark = pytest.mark.timeout(240)

POLICY = ckptstore.Retention(keep_last=2, keep_best=("loss", "min"))
CHARTS = (
    "Object.fromEntries(Object.entries(ckptDashboard.charts).map(([k,u])=>[k,u.data[1].filter(v=>v!=null).length]))"
)
ROWS = (
    "Array.from(document.querySelectorAll('#checkpoints tbody tr[data-id]')).map(r=>({id:r.dataset.id,step:+r.dataset.step,"
    "cls:r.className,fate:r.querySelector('.fate').textContent,why:r.querySelector('.reasons').textContent,"
    "health:r.querySelector('.health').textContent}))"
)


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("needs chromium (scripts/setup.sh test installs it)")
    pytest.importorskip("websocket", reason="needs websocket-client (the test extra: scripts/setup.sh test)")
    with Browser() as b:
        yield b


def check_no_errors(b: Browser) -> None:
    b.eval("1")  # collect the events that arrived
    assert b.errors == [], b.errors
    assert b.eval("document.getElementById('error').hidden") is True


def make_run(uri: str, policy: bool = True) -> ckptstore.Store:
    """Six checkpoints of a real model: loss NaN at step 30, eval_acc only on every other one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    store = ckptstore.Store(uri)
    losses = [1.0, 0.5, math.nan, 0.6, 0.55, 0.7]
    for k, loss in enumerate(losses):
        with torch.no_grad():
            model[2].weight.add_(0.05)
        metrics = {"loss": loss}
        if k % 2 == 1:
            metrics["eval_acc"] = 0.5 + k / 20
        store.save(
            {"model": model.state_dict(), "extra": {"k": k}},
            step=10 * (k + 1),
            epoch=k // 3,
            metrics=metrics,
            config={"lr": 0.1, "batch": 8 + k // 3},
            tags=["pinned"] if k == 0 else [],
            meta={"total_steps": 100, "trigger": "every_steps"},
        )
    if policy:
        store.set_retention(POLICY)
    return store


# -- the data -----------------------------------------------------------------------------------
def test_snapshot_has_every_checkpoint_with_its_retention_reasons(tmp_path):
    store = make_run(str(tmp_path / "run"))
    snap = snapshot(store)
    the_plan = plan(store.list(), POLICY)
    assert [c["step"] for c in snap["checkpoints"]] == [10, 20, 30, 40, 50, 60]
    for row, d in zip(snap["checkpoints"], the_plan.decisions):
        assert row["id"] == d.checkpoint.id and row["keep"] == d.keep and row["reasons"] == list(d.reasons)
    # kept: 10 (pinned), 20 (best loss), 50, 60 (last 2); removed: 30 (NaN loss), 40
    assert [c["step"] for c in snap["checkpoints"] if not c["keep"]] == [30, 40]
    assert snap["checkpoints"][2]["metrics"]["loss"] == "NaN"
    loss, acc = snap["metrics"]["loss"], snap["metrics"]["eval_acc"]
    assert (loss["points"], loss["not_finite"], loss["best_step"], loss["mode"]) == (5, 1, 20, "min")
    assert (acc["points"], acc["missing"], acc["best_step"], acc["mode"]) == (3, 3, 60, "max")
    assert snap["progress"]["step"] == 60 and snap["progress"]["total_steps"] == 100
    assert snap["progress"]["eta_seconds"] is not None and snap["progress"]["eta_seconds"] >= 0
    st = snap["storage"]
    assert st["logical_bytes"] == sum(i.size for i in store.list())
    assert 0 < st["stored_bytes"] < st["logical_bytes"]  # unchanged tensors were stored once
    assert st["gc_removes"] == 2 and st["free_bytes"] > 0
    # what the snapshot says gc frees is what gc frees
    assert store.gc(grace=0).freed_bytes == st["gc_frees_bytes"]
    json.dumps(snap, allow_nan=False)  # strict JSON: the page parses it


def test_backup_column_says_which_checkpoints_the_mirror_holds(tmp_path):
    store = make_run(str(tmp_path / "run"))
    ckptstore.copy_checkpoints(store.uri, str(tmp_path / "mirror"), latest=2)
    snap = snapshot(store, backup=str(tmp_path / "mirror"))
    assert [c["backup"] for c in snap["checkpoints"]] == [False] * 4 + [True] * 2
    assert snap["backup"]["holds"] == 2 and snap["backup"]["error"] is None
    missing = snapshot(store, backup=str(tmp_path / "nowhere"))
    assert missing["backup"]["holds"] == 0 and "does not exist" in missing["backup"]["error"]


def test_the_page_reads_no_tensor_data_and_the_comparison_only_when_needed(tmp_path):
    store = make_run(str(tmp_path / "run"))
    backend = store.backend
    reads: list[str] = []
    real_read, real_range, real_path = backend.read, backend.read_range, backend.local_path

    def read(key, *a, **kw):
        reads.append(key)
        return real_read(key, *a, **kw)

    def read_range(key, *a, **kw):
        reads.append(key)
        return real_range(key, *a, **kw)

    def local_path(key, *a, **kw):  # loads map local objects instead of reading them
        reads.append(key)
        return real_path(key, *a, **kw)

    backend.read, backend.read_range, backend.local_path = read, read_range, local_path  # count what is read
    snapshot(store)
    ckptstore.dashboard(store, output=str(tmp_path / "p.html"))
    ckptstore.diff_checkpoints(store, 10, 20, load=False)
    assert reads and not [k for k in reads if k.startswith("objects/")]
    ckptstore.diff_checkpoints(store, 10, 20)  # changed tensors: now both checkpoints are read
    assert [k for k in reads if k.startswith("objects/")]


def test_s3_store_served(tmp_path):
    cs = pytest.importorskip("tests.cloudservers")
    target = cs.new_s3_bucket(cs.shared("moto").url)
    store = ckptstore.Store(target.uri, storage_options=target.options)
    for k in range(3):
        store.save({"w": torch.full((4,), float(k)), "b": torch.ones(2)}, step=k, metrics={"loss": 1.0 / (k + 1)})
    with ckptstore.dashboard(target.uri, storage_options=target.options, refresh=1) as server:
        with urllib.request.urlopen(server.url + "api/snapshot", timeout=60) as r:
            snap = json.load(r)
        assert [c["step"] for c in snap["checkpoints"]] == [0, 1, 2]
        assert all(c["health"] == "ok" for c in snap["checkpoints"]) and snap["storage"]["free_bytes"] is None
        ids = [c["id"] for c in snap["checkpoints"]]
        with urllib.request.urlopen(f"{server.url}api/diff?a={ids[0]}&b={ids[2]}", timeout=60) as r:
            d = json.load(r)
        assert {t["name"]: t["status"] for t in d["tensors"]} == {"w": "changed", "b": "identical"}
        assert d["tensors"][0]["relative_change"] == "Infinity"  # from all zeros


def test_works_on_an_object_store_without_reading_objects(tmp_path):
    uri = f"memory://dash-{os.getpid()}-{time.time_ns()}/run"
    store = make_run(uri)
    snap = snapshot(store)
    assert len(snap["checkpoints"]) == 6 and snap["storage"]["free_bytes"] is None
    path = ckptstore.dashboard(uri, output=str(tmp_path / "mem.html"))
    assert os.path.getsize(path) > 50_000


# -- the page in a browser ----------------------------------------------------------------------
def test_static_page_shows_charts_table_and_comparison(tmp_path, browser):
    store = make_run(str(tmp_path / "run"))
    out = ckptstore.dashboard(store.uri, output=str(tmp_path / "report.html"), compare=(10, "latest"))
    html = open(out, encoding="utf-8").read()
    assert "<script src" not in html and "<link" not in html  # self-contained: nothing to fetch
    browser.open("file://" + out)
    assert browser.eval(CHARTS) == {"metric:loss": 5, "metric:eval_acc": 3, "storage": 6}
    # the best point is drawn at the best checkpoint's step
    best = browser.eval("(u=>u.data[0].filter((x,i)=>u.data[2][i]!=null))(ckptDashboard.charts['metric:loss'])")
    assert best == [20]
    assert browser.eval("ckptDashboard.charts['metric:loss'].scales.y.distr") == 1  # 0.5..1: linear
    rows = browser.eval(ROWS)
    the_plan = plan(store.list(), POLICY)
    assert [r["step"] for r in rows] == [60, 50, 40, 30, 20, 10]  # newest first
    by_id = {r["id"]: r for r in rows}
    for d in the_plan.decisions:
        r = by_id[d.checkpoint.id]
        assert r["why"] == "; ".join(d.reasons)
        assert r["fate"] == ("keep" if d.keep else "gc removes") and ("remove" in r["cls"]) == (not d.keep)
        assert r["health"] == "ok"
    assert "tagged pinned" in by_id[the_plan.decisions[0].checkpoint.id]["why"]
    tensors = browser.eval(
        "Array.from(document.querySelectorAll('#cmp-tensors tbody tr'))"
        ".map(r=>[r.dataset.name, r.querySelector('.status').textContent])"
    )
    assert dict(tensors) == {
        "model.0.weight": "identical",
        "model.0.bias": "identical",
        "model.2.weight": "changed",
        "model.2.bias": "identical",
    }
    config = browser.eval("Array.from(document.querySelectorAll('#cmp-config tbody tr td.mono')).map(t=>t.textContent)")
    assert config == ["batch"]
    values = browser.eval("Array.from(document.querySelectorAll('#cmp-values tbody tr td')).map(t=>t.textContent)")
    assert values == ["extra.k", "0", "5"]
    check_no_errors(browser)


def test_served_page_refreshes_while_a_run_writes_and_compares(tmp_path, browser):
    store = make_run(str(tmp_path / "run"), policy=False)  # the new save forgets nothing
    with ckptstore.dashboard(store.uri, refresh=0.2) as server:
        assert server.url.startswith("http://127.0.0.1:")
        browser.open(server.url)
        assert len(browser.eval(ROWS)) == 6
        renders = browser.eval("ckptDashboard.renders")
        time.sleep(0.6)
        assert browser.eval("ckptDashboard.renders") == renders  # nothing changed: no re-render
        with torch.no_grad():
            state = store.load()
            state["model"]["0.bias"] += 1
        store.save(state, step=70, metrics={"loss": 0.4})
        browser.wait_for("document.querySelectorAll('#checkpoints tbody tr').length == 7", 30)
        assert browser.eval(CHARTS)["metric:loss"] == 6
        # compare 60 -> 70 through the server (loads both checkpoints)
        ids = {c.step: c.id for c in store.list()}
        browser.eval(
            f"document.getElementById('cmp-a').value='{ids[60]}';"
            f"document.getElementById('cmp-b').value='{ids[70]}'; ckptDashboard.compare()"
        )
        browser.wait_for("ckptDashboard.diff !== null", 30)
        d = browser.eval("ckptDashboard.diff")
        status = {t["name"]: t["status"] for t in d["tensors"]}
        assert status == {
            "model.0.weight": "identical",
            "model.0.bias": "changed",
            "model.2.weight": "identical",
            "model.2.bias": "identical",
        }
        rel = {t["name"]: t["relative_change"] for t in d["tensors"]}
        old = store.load(60)["model"]["0.bias"]
        assert rel["model.0.bias"] == pytest.approx(float(torch.ones(16).norm() / old.double().norm()), rel=1e-6)
        check_no_errors(browser)
        # read-only and strict about its routes
        for method in ("POST", "PUT", "DELETE"):
            req = urllib.request.Request(server.url + "api/snapshot", method=method, data=b"")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 405
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "api/diff?a=ffff&b=eeee", timeout=10)
        assert e.value.code == 400 and "no checkpoint" in json.load(e.value)["error"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)  # closed


def test_empty_location_then_the_first_checkpoint(tmp_path, browser):
    uri = str(tmp_path / "not-yet")
    with ckptstore.dashboard(uri, refresh=0.2) as server:
        browser.open(server.url)
        assert "No checkpoint store" in browser.eval("document.getElementById('overview').textContent")
        assert browser.eval(CHARTS) == {}
        ckptstore.save({"w": torch.zeros(3)}, uri, step=5, metrics={"loss": 1.0})
        browser.wait_for("document.querySelectorAll('#checkpoints tbody tr[data-id]').length == 1", 30)
        assert browser.eval(CHARTS) == {"metric:loss": 1, "storage": 1}
        check_no_errors(browser)
    # a store with no checkpoint (only its config) as a file
    empty = ckptstore.Store(str(tmp_path / "empty"))
    empty.set_retention(ckptstore.Retention(keep_last=3))
    browser.open("file://" + ckptstore.dashboard(empty, output=str(tmp_path / "empty.html")))
    assert browser.eval(ROWS) == [] and browser.eval(CHARTS) == {}
    assert "no checkpoints yet" in browser.eval("document.getElementById('checkpoints').textContent")
    check_no_errors(browser)


def test_damaged_manifest_and_missing_object_are_shown(tmp_path, browser):
    store = make_run(str(tmp_path / "run"))
    infos = store.list()
    key = os.path.join(store.uri, infos[1].key)
    with open(key, "r+b") as f:  # damage step 20's manifest
        f.seek(40)
        f.write(b"XX")
    others = {k for i in infos if i.step != 50 for k in store.manifest(id=i.id).objects}
    victim = next(k for k in store.manifest(step=50).objects if k not in others)  # only step 50 names it
    os.remove(os.path.join(store.uri, "objects", victim[:2], victim))
    out = ckptstore.dashboard(str(tmp_path / "run"), output=str(tmp_path / "d.html"))
    browser.open("file://" + out)
    assert not browser.eval("document.getElementById('damaged-section').hidden")
    text = browser.eval("document.getElementById('damaged').textContent")
    assert "step 20" in text and "does not match its hash" in text
    rows = browser.eval(ROWS)
    assert [r["step"] for r in rows] == [60, 50, 40, 30, 10]
    health = {r["step"]: r["health"] for r in rows}
    assert "missing" in health[50] and "unhealthy" in rows[1]["cls"]
    assert all(health[s] == "ok" for s in (10, 30, 40, 60))
    gc_card = browser.eval("document.getElementById('storage-cards').textContent")
    assert "damaged manifest stops gc" in gc_card
    check_no_errors(browser)


def test_odd_metrics_draw_without_errors(tmp_path, browser):
    """All-NaN, infinite, negative and zero values, a metric on one checkpoint, a step saved twice."""
    uri = str(tmp_path / "odd")
    values = [
        {"nan": math.nan, "neg": -1.0, "zero": 0.0, "inf": 1.0},
        {"nan": math.nan, "neg": 2.0, "zero": 0.0, "inf": math.inf, "once": 3.0},
        {"nan": math.nan, "neg": -3.0, "zero": 0.0, "inf": -math.inf},
    ]
    for k, m in enumerate(values):
        ckptstore.save({"w": torch.full((2,), float(k))}, uri, step=min(k, 1) * 10, metrics=m)
    browser.open("file://" + ckptstore.dashboard(uri, output=str(tmp_path / "odd.html")))
    assert browser.eval(CHARTS) == {
        "metric:nan": 0,
        "metric:neg": 3,
        "metric:zero": 3,
        "metric:inf": 1,
        "metric:once": 1,
        "storage": 3,
    }
    assert [r["step"] for r in browser.eval(ROWS)] == [10, 10, 0]
    cells = browser.eval(
        "Array.from(document.querySelectorAll('#checkpoints tbody tr')[1].cells).map(c=>c.textContent)"
    )
    assert "Infinity" in cells and "NaN" in cells
    check_no_errors(browser)


def test_a_thousand_checkpoints(tmp_path, browser):
    store = long_run(str(tmp_path / "long"), 1000, total_steps=20000)
    t = time.perf_counter()
    out = ckptstore.dashboard(store.uri, output=str(tmp_path / "long.html"))
    build = time.perf_counter() - t
    t = time.perf_counter()
    browser.open("file://" + out)
    shown = time.perf_counter() - t
    assert build < 30 and shown < 30  # loose sanity bounds; benchmarks/bench_dashboard.py measures
    infos = store.list()
    assert len(browser.eval(ROWS)) == 1000
    finite = sum(1 for i in infos if math.isfinite(i.metrics["loss"]))
    assert finite < 1000
    acc = sum(1 for i in infos if "eval_acc" in i.metrics)
    assert browser.eval(CHARTS) == {"metric:loss": finite, "metric:eval_acc": acc, "storage": 1000}
    assert browser.eval("ckptDashboard.charts['metric:loss'].scales.y.distr") == 3  # spans 2.0..0.013: log
    # still responsive: rendering everything again takes well under the loose bound
    assert (
        browser.eval(
            "(()=>{const t=performance.now(); ckptDashboard.render(ckptDashboard.data); return performance.now()-t})()"
        )
        < 10_000
    )
    check_no_errors(browser)


# -- diff -----------------------------------------------------------------------------------------
def test_diff_names_every_kind_of_change(tmp_path):
    uri = str(tmp_path / "run")
    torch.manual_seed(0)
    a = {
        "model": {"w": torch.randn(4, 4), "b": torch.zeros(4), "gone": torch.ones(2), "shape": torch.ones(3)},
        "opt": {
            "state": {0: {"exp_avg": torch.ones(4), "step": 3}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}],
        },
        "epoch": 1,
        "same": "x",
    }
    b = {
        "model": {
            "w": a["model"]["w"] * 1.1,
            "b": a["model"]["b"].clone(),
            "new": torch.ones(5),
            "shape": torch.ones(4),
        },
        "opt": {
            "state": {0: {"exp_avg": torch.ones(4), "step": 4}},
            "param_groups": [{"lr": 0.05, "betas": (0.9, 0.99)}],
        },
        "same": "x",
        "sampler": None,
    }
    ckptstore.save(a, uri, step=1, config={"lr": 0.1, "sched": {"warmup": 10}})
    ckptstore.save(b, uri, step=2, config={"lr": 0.2, "sched": {"warmup": 10}, "new": True})
    d = ckptstore.diff_checkpoints(uri, 1, 2)
    status = {t.name: t.status for t in d.tensors}
    assert status == {
        "model.w": "changed",
        "model.b": "identical",
        "model.new": "added",
        "model.gone": "removed",
        "model.shape": "reshaped",
        "opt.state.0.exp_avg": "identical",
    }
    dedup = {t.name for t in d.tensors if t.deduplicated}
    assert dedup == {"model.b", "opt.state.0.exp_avg"}
    w = next(t for t in d.tensors if t.name == "model.w")
    assert w.relative_change == pytest.approx(0.1, rel=1e-5)
    layer = {la.name: la for la in d.layers}["model"]
    assert layer.changed == 4  # w changed, new, gone, shape
    assert layer.relative_change == pytest.approx(0.1, rel=1e-5)  # w and the all-zero b
    assert d.config == [("lr", 0.1, 0.2), ("new", "<absent>", True)]
    # the state's plain values are compared from the manifests, without loading
    assert d.values == [
        ("opt.state.0.step", 3, 4),
        ("opt.param_groups.0.lr", 0.1, 0.05),
        ("epoch", 1, "<absent>"),
        ("sampler", "<absent>", None),
    ]
    assert ckptstore.diff_checkpoints(uri, 1, 2, load=False).values == d.values
    assert d.loaded
    # manifests only
    d2 = ckptstore.diff_checkpoints(uri, 1, "latest", load=False)
    assert not d2.loaded and next(t for t in d2.tensors if t.name == "model.w").relative_change is None


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptstore", *args], capture_output=True, text=True, timeout=120, **kw)


def test_diff_command(tmp_path):
    store = make_run(str(tmp_path / "run"))
    r = run_cli("diff", store.uri, "40", "60")
    assert r.returncode == 0, r.stderr
    assert "model.2.weight  changed" in r.stdout and "batch: 9 -> 9" not in r.stdout
    assert "3 identical tensor(s) not listed" in r.stdout
    assert "values (not tensors):\n  extra.k: 3 -> 5\n" in r.stdout
    assert "values (not tensors): the same" in run_cli("diff", store.uri, "60", "60").stdout
    j = json.loads(run_cli("diff", store.uri, "10", "--json").stdout)
    assert j["b"]["step"] == 60 and j["config"] == [{"path": "batch", "a": 8, "b": 9}]
    bad = run_cli("diff", store.uri, "999")
    assert bad.returncode == 1 and "no checkpoint at step 999" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("diff", store.uri, "best", "10")
    assert bad.returncode == 1 and "'best' names no checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_dashboard_command_writes_a_file_and_serves_until_ctrl_c(tmp_path):
    store = make_run(str(tmp_path / "run"))
    r = run_cli("dashboard", store.uri, "--output", str(tmp_path / "page.html"))
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(tmp_path / "page.html") > 50_000
    assert run_cli("dashboard", store.uri, "--compare", "10", "20").returncode == 2  # needs --output
    bad = run_cli("dashboard", store.uri, "--output", str(tmp_path / "no" / "such" / "dir.html"))
    assert bad.returncode == 1 and "cannot write" in bad.stderr and "Traceback" not in bad.stderr
    p = subprocess.Popen(
        [sys.executable, "-m", "ckptstore", "dashboard", store.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url, timeout=30) as resp:
            page = resp.read().decode()
        assert resp.status == 200 and "uPlot" in page and store.uri in page
        with urllib.request.urlopen(url + "api/snapshot", timeout=30) as resp:
            assert len(json.load(resp)["checkpoints"]) == 6
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err and "dashboard stopped" in out, (out, err)


def test_dashboard_of_a_path_with_no_store_says_so(tmp_path):
    """A mistyped path used to give a page of nothing and 'wrote the dashboard': --output now
    refuses it, and the served page (which may be opened before the run's first save) says so."""
    missing = str(tmp_path / "runz")
    r = run_cli("dashboard", missing, "--output", str(tmp_path / "page.html"))
    assert r.returncode == 1 and "no checkpoint store at" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "page.html").exists() and not os.path.exists(missing)
    with pytest.raises(ckptstore.StoreNotFoundError):
        ckptstore.dashboard(missing, output=str(tmp_path / "page.html"))
    p = subprocess.Popen(
        [sys.executable, "-m", "ckptstore", "dashboard", missing],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "127.0.0.1" in p.stdout.readline()
        assert "no store at" in p.stdout.readline()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0 and "Traceback" not in err and not os.path.exists(missing)


def test_the_public_name_is_the_function():
    import ckptstore.web._collect  # noqa: F401 - importing the package's modules leaves the name alone

    assert callable(ckptstore.dashboard) and ckptstore.dashboard.__name__ == "dashboard"
    assert ckptstore.dashboard is ckptstore.web.dashboard


class _Plain:
    """A value saved with pickle that has no ``==`` of its own."""

    def __init__(self, x: int) -> None:
        self.x = x


def test_diff_values_compare_pickled_objects_by_content_and_long_lists_as_one(tmp_path):
    uri = str(tmp_path / "run")
    hist = [float(i) for i in range(100)]
    ckptstore.save({"w": torch.ones(2), "cfg": _Plain(1), "hist": hist}, uri, step=1, allow_pickle=True)
    ckptstore.save({"w": torch.ones(2), "cfg": _Plain(1), "hist": hist + [5.0]}, uri, step=2, allow_pickle=True)
    d = ckptstore.diff_checkpoints(uri, 1, 2, allow_pickle=True)
    assert [(p, len(a), len(b)) for p, a, b in d.values] == [("hist", 100, 101)]  # cfg is the same object
    assert d.to_json()["values"] == [{"path": "hist", "a": "list of 100 items", "b": "list of 101 items"}]

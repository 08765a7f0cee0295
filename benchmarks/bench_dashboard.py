"""How fast the dashboard is for a long run, and the screenshot in docs/.

Usage:
    python benchmarks/bench_dashboard.py [--checkpoints 1000] [--repeats 3]
        -> prints a table, writes benchmarks/results/dashboard.json
    python benchmarks/bench_dashboard.py --screenshot docs/dashboard.png
        -> trains a small model for real (40 checkpoints, retention, a backup mirror) and saves
           a full-page screenshot of its dashboard

Measured for a store of N checkpoints (tests/_dashboard_data.long_run: three real saves and
N - 3 manifests that reuse their objects): the snapshot (every manifest read and validated,
one listing of objects/) cold (a fresh Store) and warm (manifests cached, as the server's
refreshes are), the page render, the file size, and in headless Chromium the time from
navigation to a fully drawn page (charts and table), as the page itself measures it
(``browser_ready_ms`` for the file, ``served_ready_ms`` for the served page with a cold server;
``served_open_ms`` is the test driver's wall time until it saw the page ready).
Needs Chromium (scripts/setup.sh test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ckptstore  # noqa: E402
from ckptstore.web._collect import snapshot  # noqa: E402
from ckptstore.web._page import render  # noqa: E402
from tests._browser import Browser  # noqa: E402
from tests._dashboard_data import long_run  # noqa: E402


def measure(n: int, repeats: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-dash-")
    uri = os.path.join(tmp, "run")
    t = time.perf_counter()
    long_run(uri, n, total_steps=n * 20)
    made = time.perf_counter() - t
    cold, warm, page_s, browser_ms, served_ms, served_ready, unchanged_ms = [], [], [], [], [], [], []
    size = 0
    with Browser() as b:
        for _ in range(repeats):
            store = ckptstore.Store(uri)
            t = time.perf_counter()
            snap = snapshot(store)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            snap = snapshot(store)
            warm.append(time.perf_counter() - t)
            t = time.perf_counter()
            html = render(snap, mode="static")
            page_s.append(time.perf_counter() - t)
            size = len(html.encode())
            path = os.path.join(tmp, "page.html")
            with open(path, "w", encoding="utf-8") as f:
                f.write(html)
            b.open("file://" + path)
            browser_ms.append(b.eval("ckptDashboard.readyMs"))
            assert b.eval("document.querySelectorAll('#checkpoints tbody tr[data-id]').length") == n
            with ckptstore.dashboard(uri) as server:
                t = time.perf_counter()
                b.open(server.url)
                served_ms.append((time.perf_counter() - t) * 1000)
                served_ready.append(b.eval("ckptDashboard.readyMs"))
                sig = b.eval("ckptDashboard.data.signature")
                t = time.perf_counter()
                with urllib.request.urlopen(f"{server.url}api/snapshot?since={sig}") as r:
                    assert json.load(r)["unchanged"]
                unchanged_ms.append((time.perf_counter() - t) * 1000)
            b.eval("1")
            assert not b.errors, b.errors
    med = statistics.median
    return {
        "checkpoints": n,
        "store_made_s": round(made, 2),
        "snapshot_cold_s": round(med(cold), 3),
        "snapshot_warm_s": round(med(warm), 3),
        "render_s": round(med(page_s), 4),
        "page_bytes": size,
        "browser_ready_ms": round(med(browser_ms)),
        "served_ready_ms": round(med(served_ready)),
        "served_open_ms": round(med(served_ms)),
        "refresh_unchanged_ms": round(med(unchanged_ms), 1),
        "cpu": os.cpu_count(),
        "torch": torch.__version__,
    }


def demo_store(root: str) -> tuple[str, str]:
    """A real small training run: a checkpoint every 10 steps, eval every 50, retention, a mirror."""
    uri, mirror = os.path.join(root, "runs", "exp1"), os.path.join(root, "backup", "exp1")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 1)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 600)
    w_true = torch.randn(64, 1)
    during = ckptstore.Retention(keep_last=8, keep_best=("eval_loss", "min"), keep_every=100)
    store = ckptstore.Store(uri, retention=during, backup=ckptstore.Backup(mirror, keep_last=3))
    for step in range(1, 401):
        x = torch.randn(128, 64)
        y = torch.sin(x @ w_true) + 0.1 * torch.randn(128, 1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 10 == 0:
            metrics = {"loss": loss.item(), "lr": sched.get_last_lr()[0]}
            if step % 50 == 0:
                with torch.no_grad():
                    xv = torch.randn(512, 64)
                    metrics["eval_loss"] = float(torch.nn.functional.mse_loss(model(xv), torch.sin(xv @ w_true)))
            store.save(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()},
                step=step,
                epoch=step // 100,
                metrics=metrics,
                config={"lr": 3e-3, "batch": 128, "width": 256},
                tags=["pinned"] if step == 200 else [],
                meta={"total_steps": 600, "trigger": "every_steps", "train_seconds": step * 0.5},
            )
            time.sleep(0.02)
    store.close()  # waits for the mirror
    # a tighter policy stored afterwards: the page shows what the next gc would remove
    ckptstore.Store(uri).set_retention(ckptstore.Retention(keep_last=4, keep_best=("eval_loss", "min"), keep_every=100))
    return uri, mirror


def screenshot(path: str) -> None:
    root = tempfile.mkdtemp(prefix="dash-demo-")
    uri, mirror = demo_store(root)
    cwd = os.getcwd()
    os.chdir(root)  # the page shows the store as a user typed it: runs/exp1
    try:
        out = ckptstore.dashboard(
            "runs/exp1", output=os.path.join(root, "demo.html"), backup="backup/exp1", compare=(390, 400)
        )
    finally:
        os.chdir(cwd)
    with Browser(width=1280, height=900) as b:
        b.open("file://" + out)
        b.eval("1")
        assert not b.errors, b.errors
        b.screenshot(path, max_height=2000)  # the overview, charts, table and the start of a comparison
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", metavar="PNG", help="write the demo screenshot instead of measuring")
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
        return
    r = measure(args.checkpoints, args.repeats)
    for k, v in r.items():
        print(f"{k:>22}  {v}")
    out = os.path.join(ROOT, "benchmarks", "results", "dashboard.json")
    with open(out, "w") as f:
        json.dump(r, f, indent=2)
    print(f"wrote {out}")
    if not math.isfinite(r["browser_ready_ms"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

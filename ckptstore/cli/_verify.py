"""``ckptstore verify``: check many checkpoints, reading each shared object only once.

Structure first (the manifest validates and its tables agree: ``check_manifest``), then every
object: by default its size, its hash, and that it decodes to bytes matching its raw hash (every
byte is read); with ``--quick`` only that it is present. A problem is reported for every
checkpoint that uses the object.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointNotFoundError, IntegrityError, UnsupportedFormatError
from .._progress import byte_bar
from ..format import _hashing
from ..format._layout import OBJECTS_DIR, object_key, parse_object_key
from ..store._gc import LOST_MANIFESTS, REPAIR_CONFIG, manifests_folder_missing
from ._common import add_store_arg, open_store

if TYPE_CHECKING:
    from ..format._manifest import Manifest
    from ..store._store import Store


def add_parsers(sub: Any) -> None:
    verify = sub.add_parser("verify", help="check checkpoints: structure and every byte against its hash")
    add_store_arg(verify)
    verify.add_argument("--step", type=int, help="only the checkpoint(s) at this step (default: all)")
    depth = verify.add_mutually_exclusive_group()
    depth.add_argument(
        "--quick",
        dest="read_data",
        action="store_false",
        help="only check that every object is present (fast; a damaged byte goes unseen)",
    )
    depth.add_argument(
        "--read-data",
        dest="read_data",
        action="store_true",
        help="read every object and check its hash (the default; kept for old scripts)",
    )
    verify.set_defaults(read_data=True)
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=cmd_verify)


def _check_object(store: Store, key: str, m: Manifest, read_data: bool) -> str | None:
    """None when the object is sound, else what is wrong."""
    backend = store.backend
    info = m.objects[key]
    if not read_data:
        return None if backend.exists(object_key(key)) else "missing"
    try:
        data = backend.read(object_key(key))
    except FileNotFoundError:
        return "missing"
    if len(data) != info.size:
        return f"has {len(data)} bytes, expected {info.size}"
    if _hashing.digest(data) != key:
        return "does not match its hash"
    try:
        from ..pipeline._codec import get_codec

        raw = get_codec(info.codec).decode(data, info.raw_size)
    except (IntegrityError, ValueError) as e:
        return f"does not decode: {e}"
    if info.raw_hash is not None and _hashing.digest(raw) != info.raw_hash:
        return "decodes to bytes that do not match their hash"
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    from ..pipeline._reader import check_manifest

    problems: list[str] = []
    results: list[dict[str, Any]] = []
    orphaned: str | None = None
    with open_store(args) as store:
        catalog = store.catalog
        catalog.config()
        config_damage = catalog.config_damage()
        config_checked = catalog.config().checksum is not None
        selected: list[tuple[int, str, str]] = []
        for step, digest, key in catalog.manifest_keys():
            if args.step is not None and step != args.step:
                continue
            selected.append((step, digest, key))
        if args.step is not None and not selected:
            raise CheckpointNotFoundError(f"no checkpoint at step {args.step} in {store.uri}")
        if (
            not selected
            and manifests_folder_missing(store)
            and any(parse_object_key(k) for k in store.backend.list(OBJECTS_DIR))
        ):
            orphaned = LOST_MANIFESTS
            problems.append(orphaned)
        manifests: dict[str, Manifest] = {}
        unreadable: set[str] = set()  # ids of checkpoints whose manifest itself is damaged
        for step, digest, key in selected:
            where = f"step {step} ({digest[:12]})"
            try:
                m = catalog.manifest(key)
                check_manifest(m, where)
            except UnsupportedFormatError as e:  # not damage: a newer ckptstore wrote it
                results.append({"step": step, "id": digest, "ok": False, "newer": True, "problems": [str(e)]})
                continue
            except IntegrityError as e:
                results.append({"step": step, "id": digest, "ok": False, "problems": [str(e)]})
                unreadable.add(digest)
                continue
            except CheckpointNotFoundError:
                continue
            manifests[key] = m
        owner: dict[str, Manifest] = {}
        for m in manifests.values():
            for k in m.objects:
                owner.setdefault(k, m)
        total = sum(m.objects[k].size for k, m in owner.items()) if args.read_data else len(owner)
        bad: dict[str, str] = {}
        with byte_bar(total, "verifying", sys.stderr.isatty()) as bar:

            def one(k: str) -> tuple[str, str | None]:
                r = _check_object(store, k, owner[k], args.read_data)
                if bar:
                    bar(owner[k].objects[k].size if args.read_data else 1)
                return k, r

            with ThreadPoolExecutor(max_workers=store.workers) as pool:
                for k, why in pool.map(one, list(owner)):
                    if why is not None:
                        bad[k] = why
        for step, digest, key in selected:
            if key not in manifests:
                continue
            errs = [f"object {k} {bad[k]}" for k in manifests[key].objects if k in bad]
            results.append({"step": step, "id": digest, "ok": not errs, "problems": errs})
    results.sort(key=lambda r: (r["step"], r["id"]))
    for r in results:
        problems.extend(f"step {r['step']} ({r['id'][:12]}): {p}" for p in r["problems"])
    if config_damage is not None:
        problems.append(config_damage)
    if args.json:
        config = {"ok": config_damage is None, "checksum": config_checked, "problem": config_damage}
        doc = {
            "read_data": args.read_data,
            "config": config,
            "checkpoints": results,
            "objects_without_checkpoints": orphaned,
            "ok": not problems,
        }
        print(json.dumps(doc, indent=2))
        return 1 if problems else 0
    if config_damage is not None:
        print(f"ckptstore.json: DAMAGED: {config_damage}; gc refuses to act on it. {REPAIR_CONFIG}.")
    what = "structure and every byte" if args.read_data else "structure and object presence only; bytes not read"
    for r in results:
        status = (
            "ok"
            if r["ok"]
            else "NEWER FORMAT (not damaged; upgrade ckptstore to verify it): " + r["problems"][0]
            if r.get("newer")
            else "DAMAGED: "
            + "; ".join(r["problems"][:3])
            + (f" (+{len(r['problems']) - 3} more)" if len(r["problems"]) > 3 else "")
        )
        print(f"step {r['step']:<10} {r['id'][:12]}  {status}")
    n_bad = sum(1 for r in results if not r["ok"] and not r.get("newer"))
    n_new = sum(1 for r in results if r.get("newer"))
    verdict = ", ".join(
        [f"{n_bad} damaged"] * bool(n_bad) + [f"{n_new} written by a newer ckptstore (upgrade)"] * bool(n_new)
    )
    verdict = verdict or ("see below" if orphaned else "all ok")
    print(f"checked {len(results)} checkpoint(s) ({what}): {verdict}")
    if n_bad:
        hurt = [r for r in results if not r["ok"] and not r.get("newer")]
        ids = " ".join(r["id"][:12] for r in hurt)
        manifest_damage = any(r["id"] in unreadable for r in hurt)
        print(
            "note: a damaged checkpoint can be copied again from a backup "
            f"(`ckptstore cp BACKUP URI --id {ids} --repair`) or removed (`ckptstore forget URI --id {ids}`"
            + ("; gc deletes nothing while a manifest is damaged)" if manifest_damage else ")"),
            file=sys.stderr,
        )
    if not results and args.step is None:
        print("the store has no checkpoints")
    if orphaned:
        print(f"warning: {orphaned}")
    return 1 if problems else 0

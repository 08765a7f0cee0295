"""The catalog: the one owner of what a process knows about a store's metadata.

It lists and caches manifests (validated once, by key), remembers damaged ones, reads and writes
the store config (``ckptstore.json``, with its stored retention policy), and keeps the dedup
index (what the store already holds, built from the newest checkpoint). Everything that adds,
removes or deletes goes through ``added``, ``removed`` and ``objects_deleted``; ``invalidate``
is the one way to drop the dedup index. Thread-safe.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from .._errors import (
    CheckpointNotFoundError,
    CkptstoreWarning,
    IntegrityError,
    InvalidArgumentError,
    StorageError,
    StoreNotFoundError,
    UnsupportedFormatError,
    warn_user,
)
from ..format import _hashing
from ..format._header import header_end, parse_header
from ..format._info import CheckpointInfo
from ..format._layout import CONFIG_KEY, MANIFESTS_DIR, parse_manifest_key
from ..format._manifest import (
    Manifest,
    StoreConfig,
    config_damage,
    dump,
    foreign_config,
    new_store_config,
    parse_manifest,
    parse_store_config,
    salvage_store_config,
)
from ..pipeline._pools import borrow
from ..storage._backend import Backend
from . import _verdicts
from ._gc import REPAIR_CONFIG
from ._retention import Retention

if TYPE_CHECKING:
    from ..pipeline._writer import DedupIndex

log = logging.getLogger("ckptstore")

#: (step, id, key) of one manifest, as listed
Key = tuple[int, str, str]

_UNREADABLE = (IntegrityError, UnsupportedFormatError, CheckpointNotFoundError)
#: manifests validated in full in this process, by digest, shared by every Catalog: a
#: ``ckptstore.save()`` opens a new Store each time, and its parent was written or checked by
#: the previous call (manifests are immutable and named by their hash)
_VALIDATED: OrderedDict[str, Manifest] = OrderedDict()
_VALIDATED_MAX = 8  # the parent of the next save, for a few stores; full manifests are large
_validated_lock = threading.Lock()


def _validated(digest: str) -> Manifest | None:
    with _validated_lock:
        m = _VALIDATED.get(digest)
        if m is not None:
            _VALIDATED.move_to_end(digest)
        return m


def _note_validated(digest: str, m: Manifest) -> None:
    with _validated_lock:
        _VALIDATED[digest] = m
        _VALIDATED.move_to_end(digest)
        while len(_VALIDATED) > _VALIDATED_MAX:
            _VALIDATED.popitem(last=False)


#: a listing with at least this many manifests to read reads them on threads
_PARALLEL_MIN = 16
_LIST_THREADS = 4
_LIST_AHEAD = 16  # manifests read ahead of the parsing (at most this many held at once)


#: endings of single-file checkpoints: a store created under such a name is probably a mistake
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _warn_if_file_name(uri: str) -> None:
    """A store was just created at ``uri``: warn when its name ends like a checkpoint file."""
    name = uri.rstrip("/")
    if name.lower().endswith(FILE_SUFFIXES):
        base = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        warn_user(
            f"{uri!r} ends like a checkpoint file, but a ckptstore store is a folder: this save made a folder "
            f"named {base!r}, which torch.load cannot open. Load it with ckptstore.load(); pass a folder name "
            "(e.g. 'runs/exp1') to avoid this warning, or use `ckptstore export` to get a torch.save file."
        )


def _skip_message(step: int, e: Exception) -> str:
    return f"skipping checkpoint at step {step}: {e}"


class Catalog:
    """Manifests, config and dedup index of the store behind ``backend``.

    ``restore``: called when the store config is missing; returns True when it created the store
    (a backup mirror restoring a vanished local store). ``chunk_size``: recorded in the config of a
    store this catalog creates."""

    def __init__(
        self, backend: Backend, *, restore: Callable[[], bool] | None = None, chunk_size: int = 32 << 20
    ) -> None:
        self.backend = backend
        self.chunk_size = chunk_size
        self._restore = restore
        self._lock = threading.RLock()
        self._manifests: dict[str, Manifest] = {}
        self._infos: dict[str, CheckpointInfo] = {}  # manifest key -> its record, as listed
        self._verdict_dir = _verdicts.cache_dir()
        self._bad: dict[str, str] = {}
        self._logged: set[str] = set()  # damaged manifests ``newest`` already logged
        self._newer: dict[str, int] = {}  # manifest key -> step, for manifests of a newer format version
        self._config: StoreConfig | None = None
        self._config_damage: str | None = None
        self._config_bytes: bytes | None = None  # what _config was parsed from
        self._policy: tuple[bytes, Retention | None] | None = None  # the stored policy, and its config's bytes
        self._index: DedupIndex | None = None
        self._index_keys: set[str] | None = None  # manifests present when the index was last checked

    @property
    def uri(self) -> str:
        return self.backend.uri

    def clear(self) -> None:
        """Forget every cached manifest and the dedup index (the store may have changed)."""
        with self._lock:
            self._manifests.clear()
            self._infos.clear()
            self._index = None

    # -- the store config ------------------------------------------------------------------
    def exists(self) -> bool:
        return self.backend.exists(CONFIG_KEY)

    def not_found(self) -> StoreNotFoundError:
        where = self.backend.describe()
        state = self.backend.root_state()
        if state == "missing":
            msg = (
                f"no checkpoint store at {where}: the path does not exist. Check the path, or save a "
                "checkpoint there first."
            )
        elif state == "file":
            msg = (
                f"{where} is a file, not a checkpoint store. To bring a torch.save file into a store, "
                "use `ckptstore import`."
            )
        elif self.manifest_keys():
            msg = (
                f"{where} holds checkpoints but lost its {CONFIG_KEY}. Copy it back from a backup "
                f"(`ckptstore cp BACKUP {self.uri} --all --repair`), or let the next save write a new one (it "
                "keeps the chunk size the checkpoints were cut with)."
            )
        else:
            msg = f"{where} exists but is not a checkpoint store (it has no {CONFIG_KEY})."
        return StoreNotFoundError(msg, path=where)

    def config(self) -> StoreConfig:
        """The store config (read once, then cached); StoreNotFoundError when there is no store."""
        with self._lock:
            if self._config is not None:
                return self._config
        data = self._read_config()
        if data is None:
            if self._restore is None or not self._restore():
                raise self.not_found()
            data = self.backend.read(CONFIG_KEY)  # the restore created the store
        return self._set_config(data)

    def _read_config(self) -> bytes | None:
        """The config's bytes, None when there is none; StoreNotFoundError when the root is a file.
        The config is read first: on an object store, asking what the root is costs requests."""
        try:
            return self.backend.read(CONFIG_KEY)
        except (FileNotFoundError, NotADirectoryError, StorageError) as e:
            # a storage failure for any other reason than a path (a timeout, a refused connection)
            # would only fail again, after as many retries, when asked what the root is
            if isinstance(e, StorageError) and not isinstance(e.__cause__, (FileNotFoundError, NotADirectoryError)):
                raise
            if self.backend.root_state() == "file":
                raise self.not_found() from None
            if isinstance(e, StorageError):
                raise
        return None

    def ensure(self) -> StoreConfig:
        """The store config, creating the store first when there is none (recording the catalog's
        ``chunk_size``, which every writer of the new store will then use)."""
        with self._lock:
            if self._config is not None:
                return self._config
            data = self._read_config()
            if data is not None:  # an existing store: one read
                return self._set_config(data)
            if not self.backend.exists(CONFIG_KEY):
                # a store that lost its config keeps cutting as its checkpoints were cut
                chunk = self._chunk_size_in_use() if self.manifest_keys() else None
                self.backend.write(CONFIG_KEY, dump(new_store_config(chunk or self.chunk_size)), if_absent=True)
                self.backend.sync()
                _warn_if_file_name(self.uri)
            return self.config()

    def _set_config(self, data: bytes) -> StoreConfig:
        """Parse and cache config bytes; remember whether their checksum matches. The same bytes
        again (every save re-reads the config for its policy) are not parsed again."""
        with self._lock:
            if self._config is not None and data == self._config_bytes:
                return self._config
        where = self.backend.describe(CONFIG_KEY)
        try:
            cfg = parse_store_config(data, where)
            damage = config_damage(data, cfg, where)
        except UnsupportedFormatError:
            raise
        except IntegrityError as e:
            if foreign_config(data):
                raise
            # unreadable (not JSON, not validating): loads need none of its members and saves only
            # the chunk size, so they go on with a stand-in (what of it is still legible, the chunk
            # size the newest checkpoint was cut with otherwise, no policy); gc refuses. Storing a
            # policy writes the stand-in (the repair).
            cfg, chunk = salvage_store_config(data, where)
            if chunk is None and cfg.chunk_size is not None:
                cfg = cfg.model_copy(update={"chunk_size": self._chunk_size_in_use() or self.chunk_size})
                cfg = cfg.with_checksum()
            damage = f"{e}; it was changed by hand or damaged"
        with self._lock:
            self._config = cfg
            self._config_damage = damage
            self._config_bytes = data
        return cfg

    def _chunk_size_in_use(self) -> int | None:
        """The chunk size the newest readable checkpoint was cut with (its longest segment of a
        blob of several), None when it has no blob of more than one chunk."""
        for _step, _digest, key in reversed(self.manifest_keys()):
            try:
                m = self.manifest(key)
            except _UNREADABLE:
                continue
            cut = [seg.length for b in m.blobs if len(b.segments) > 1 for seg in b.segments[:-1]]
            return max(cut) if cut else None
        return None

    def config_damage(self) -> str | None:
        """Why ``ckptstore.json`` cannot be trusted (its checksum does not match), or None. Such a
        config is still read (loads do not depend on it), but no stored policy is applied."""
        self.config()
        with self._lock:
            return self._config_damage

    def refuse_damaged_config(self, doing: str) -> None:
        """Raise IntegrityError when the config's checksum does not match (before ``doing``)."""
        damage = self.config_damage()
        if damage is not None:
            raise IntegrityError(
                f"{damage}; not {doing}, since the stored retention policy it holds cannot be trusted (a changed "
                f"keep_tags could delete pinned checkpoints). {REPAIR_CONFIG}."
            )

    def stored_policy(self) -> Retention | None:
        """The retention policy in ``ckptstore.json``, read afresh (another process may have set it).
        IntegrityError when the config does not match its checksum."""
        try:
            data = self.backend.read(CONFIG_KEY)
        except FileNotFoundError:
            return None
        cfg = self._set_config(data)
        self.refuse_damaged_config("applying its retention policy")
        cached = self._policy
        if cached is not None and cached[0] == data:
            return cached[1]
        policy = None if cfg.retention is None else Retention.from_json(cfg.retention)
        self._policy = (data, policy)
        return policy

    def set_stored_policy(self, policy: Retention | None) -> None:
        """Write ``policy`` (None: remove it) into ``ckptstore.json``, atomically, with a fresh
        checksum (which also repairs a config that did not match its own)."""
        cfg = self.ensure()
        retention = None if policy is None else policy.to_json()
        new = StoreConfig.model_validate({**cfg.model_dump(), "retention": retention}).with_checksum()
        data = dump(new)
        self.backend.write(CONFIG_KEY, data)
        self.backend.sync()
        self._set_config(data)

    # -- manifests -------------------------------------------------------------------------
    def manifest_keys(self) -> list[Key]:
        """(step, id, key) of every manifest present now, by step (one LIST)."""
        out = []
        for key in self.backend.list(MANIFESTS_DIR):
            parsed = parse_manifest_key(key)
            if parsed is not None:
                out.append((parsed[0], parsed[1], key))
        out.sort()
        return out

    def manifest(self, key: str) -> Manifest:
        """The validated manifest at ``key`` (cached). Raises IntegrityError when it is damaged,
        CheckpointNotFoundError when it is gone."""
        with self._lock:
            m = self._manifests.get(key)
        if m is not None:
            return m
        step, digest = self._parse_key(key)
        return self._validate(key, step, digest, self._read(key, step, digest))

    @staticmethod
    def _parse_key(key: str) -> tuple[int, str]:
        parsed = parse_manifest_key(key)
        if parsed is None:
            raise ValueError(f"{key!r} is not a manifest key")
        return parsed

    def _read(self, key: str, step: int, digest: str) -> bytes:
        """The manifest bytes at ``key``, checked against the hash in its name."""
        try:
            data = self.backend.read(key)
        except FileNotFoundError:
            where = self.backend.describe(key)
            raise CheckpointNotFoundError(f"checkpoint {digest[:12]} (step {step}) was removed: {where}") from None
        if _hashing.digest(data, parallel=False) != digest:
            raise IntegrityError(
                f"manifest {self.backend.describe(key)} does not match its hash; the checkpoint is damaged"
            )
        return data

    def _validate(self, key: str, step: int, digest: str, data: bytes) -> Manifest:
        """Validate manifest bytes in full (their hash already checked), cache the model and
        record the verdict for later listings."""
        m = _validated(digest)
        if m is not None and m.step == step:
            with self._lock:
                self._manifests[key] = m
            return m
        if _verdicts.lookup(self._verdict_dir, digest) is not None:
            # these very bytes passed every check before (the verdict): build the model only
            try:
                m = Manifest.model_validate_json(data, strict=True)
            except (ValidationError, RecursionError):
                m = None
            if m is not None and m.step == step:
                self._remember(key, digest, m, None)
                return m
        where = self.backend.describe(key)
        m = parse_manifest(data, where, digest)
        if m.step != step:
            raise IntegrityError(f"manifest {where} records step {m.step}, its name says {step}")
        # one rule for "does not validate" (format.md §8): the §5 structure checks count as much as
        # the schema, so a manifest failing them is skipped as damaged when looking for the newest
        from ..pipeline._reader import check_manifest

        check_manifest(m, where)
        self._remember(key, digest, m, data)
        return m

    def _remember(self, key: str, digest: str, m: Manifest, data: bytes | None, *, later: bool = False) -> None:
        """Cache a validated manifest and record its verdict (``later``: on a background thread)."""
        with self._lock:
            self._manifests[key] = m
        if digest:
            _note_validated(digest, m)
        if data is not None and self._verdict_dir is not None:
            s = m.stats
            v = _verdicts.Verdict(
                header_end(data, m), len(m.tensors), s.logical_bytes, s.stored_bytes, s.new_bytes, s.new_objects
            )
            (_verdicts.record_later if later else _verdicts.record)(self._verdict_dir, digest, v)

    def _slow_reads(self) -> bool:
        """Whether a manifest read waits on a network (an object store, a FUSE mount such as
        Google Drive): then a listing reads ahead on threads. From a local disk one thread is
        faster: 1,000 manifests of 109 KB listed in 0.33-0.43 s here, against 0.65-0.71 s with
        four threads handing the GIL back and forth (0.89 against 0.93-1.01 s with a cold cache)."""
        if self.backend.local_path(MANIFESTS_DIR) is None:
            return True
        mount = getattr(self.backend, "mount", None)
        return bool(getattr(mount, "is_fuse", False))

    def _listed(self, step: int, digest: str, key: str, data: bytes | None = None) -> CheckpointInfo:
        """The record of one manifest for a listing: from this process's cache, else read and
        hash-checked (``data``: read and checked already), then from its header alone when a
        validation of these very bytes is on record (``_verdicts``), else validated in full."""
        with self._lock:
            info = self._infos.get(key)
            m = self._manifests.get(key)
        if info is not None:
            return info
        if m is None:
            if data is None:
                data = self._read(key, step, digest)
            v = _verdicts.lookup(self._verdict_dir, digest)
            if v is not None and v.header_end > 0:
                try:
                    h = parse_header(data, v.header_end)
                except (ValidationError, RecursionError):
                    h = None
                if h is not None and h.step == step:
                    config = self._config_value(h.config)
                    info = CheckpointInfo.from_header(
                        h,
                        id=digest,
                        key=key,
                        uri=self.uri,
                        config=config,
                        num_tensors=v.num_tensors,
                        logical_bytes=v.logical_bytes,
                        stored_bytes=v.stored_bytes,
                        new_bytes=v.new_bytes,
                    )
            if info is None:
                m = self._validate(key, step, digest, data)
        if info is None:
            assert m is not None
            info = self.info(key, digest, m)
        with self._lock:
            self._infos[key] = info
        return info

    @staticmethod
    def _config_value(node: Any) -> Any:
        from ..format._tree import Decoder

        return Decoder([], keep_pickle=True).decode(node) if node is not None else None

    def info(self, key: str, digest: str, m: Manifest) -> CheckpointInfo:
        config = self._config_value(m.config)
        return CheckpointInfo.from_manifest(m, id=digest, key=key, uri=self.uri, config=config)

    def damaged(self) -> dict[str, str]:
        """Manifest key -> why, for every damaged manifest ``checkpoints`` skipped in this process."""
        with self._lock:
            return dict(self._bad)

    def _note_damaged(self, key: str, step: int, e: Exception) -> bool:
        """Remember a damaged (or newer-format) manifest; True the first time this process meets it."""
        with self._lock:
            new = key not in self._bad
            self._bad[key] = str(e)
            if isinstance(e, UnsupportedFormatError):
                self._newer[key] = step
        return new

    def newer(self) -> dict[str, int]:
        """Manifest key -> step, for every manifest of a newer format version ``checkpoints`` met in
        this process (this ckptstore cannot read them: upgrade)."""
        with self._lock:
            return dict(self._newer)

    def checkpoints(self, *, stacklevel: int = 3) -> list[CheckpointInfo]:
        """Every readable checkpoint, sorted by step then creation time; damaged manifests and
        those of a newer format version are skipped with one warning each."""
        self.config()
        keys = self.manifest_keys()
        results: list[CheckpointInfo | Exception] = []

        def one(k: Key, data: bytes | None = None) -> CheckpointInfo | Exception:
            try:
                return self._listed(*k, data=data)
            except (IntegrityError, UnsupportedFormatError, CheckpointNotFoundError) as e:
                return e

        def fetch(k: Key) -> bytes | Exception:
            try:
                return self._read(k[2], k[0], k[1])
            except (IntegrityError, CheckpointNotFoundError) as e:
                return e

        with self._lock:
            need = [k for k in keys if k[2] not in self._infos]
        if len(need) >= _PARALLEL_MIN and self._slow_reads():
            # the pool reads and hashes a window ahead; this thread parses (pydantic holds the
            # GIL: parsing on the pool threads as well was slower)
            with borrow(_LIST_THREADS, "ckptstore-list") as pool:
                ahead: collections.deque[tuple[str, Future[bytes | Exception]]] = collections.deque()
                pending = iter(need)
                for k in itertools.islice(pending, _LIST_AHEAD):
                    ahead.append((k[2], pool.submit(fetch, k)))
                for k in keys:
                    if not (ahead and ahead[0][0] == k[2]):  # listed in this process already
                        results.append(one(k))
                        continue
                    data = ahead.popleft()[1].result()
                    nxt = next(pending, None)
                    if nxt is not None:
                        ahead.append((nxt[2], pool.submit(fetch, nxt)))
                    results.append(data if isinstance(data, Exception) else one(k, data))
        else:
            results = [one(k) for k in keys]
        out = []
        for (step, _digest, key), r in zip(keys, results):
            if isinstance(r, (IntegrityError, UnsupportedFormatError)):
                if self._note_damaged(key, step, r):
                    warnings.warn(_skip_message(step, r), CkptstoreWarning, stacklevel=stacklevel)
                continue
            if isinstance(r, CheckpointInfo):
                out.append(r)
        out.sort(key=lambda i: (i.step, i.created_at, i.id))
        return out

    def manifests(self) -> tuple[dict[str, Manifest], list[str]]:
        """(key -> manifest of every readable checkpoint present now, problems with the others).
        A manifest removed while listing is skipped; a damaged one is a problem."""
        out: dict[str, Manifest] = {}
        problems: list[str] = []
        for step, _digest, key in self.manifest_keys():
            try:
                out[key] = self.manifest(key)
            except CheckpointNotFoundError:
                continue
            except (IntegrityError, UnsupportedFormatError) as e:
                problems.append(f"cannot read checkpoint manifest at step {step} ({key}): {e}")
        return out, problems

    def newest(self, keys: list[Key] | None = None, *, strict: bool = False) -> CheckpointInfo | None:
        """The newest readable checkpoint (highest step; the most recent of equal steps), from
        ``keys`` (a listing the caller made) or a fresh listing. Damaged manifests are skipped.

        ``strict``: a manifest of a newer format version met on the way raises its
        ``UnsupportedFormatError`` instead of being skipped (format.md §12): a default load or a
        resume must not quietly return an older checkpoint. Saves (which only want a dedup parent)
        pass False."""
        if keys is None:
            self.config()
            keys = self.manifest_keys()
        best: CheckpointInfo | None = None
        for step, digest, key in reversed(keys):
            if best is not None and step < best.step:
                break
            try:
                info = self.info(key, digest, self.manifest(key))
            except CheckpointNotFoundError:
                continue
            except (IntegrityError, UnsupportedFormatError) as e:
                if strict and isinstance(e, UnsupportedFormatError):
                    raise
                with self._lock:  # said once, in the listing's words (its warning, or this log line)
                    new = key not in self._bad and key not in self._logged
                    self._logged.add(key)
                if new:
                    log.warning("%s", _skip_message(step, e))
                continue
            if best is None or (info.created_at, info.id) > (best.created_at, best.id):
                best = info
        return best

    def key_for_id(self, id: str, keys: list[Key] | None = None) -> Key:
        """(step, id, key) of the one manifest whose id starts with ``id``, from ``keys`` (a listing
        the caller made) or a fresh listing; the manifest itself is not read."""
        if not isinstance(id, str) or not id or any(c not in "0123456789abcdef" for c in id):
            raise InvalidArgumentError(f"a checkpoint id is lowercase hex (as `ckptstore ls` shows it), not {id!r}")
        matches = [k for k in (self.manifest_keys() if keys is None else keys) if k[1].startswith(id)]
        if len(matches) > 1:
            raise CheckpointNotFoundError(f"id prefix {id!r} matches {len(matches)} checkpoints; give more digits")
        if not matches:
            raise CheckpointNotFoundError(f"no checkpoint with id {id!r} in {self.uri}")
        return matches[0]

    def find(self, step: int | None = None, *, id: str | None = None) -> CheckpointInfo:
        """The checkpoint at ``step`` (the most recent of equal steps), with id (or a unique prefix
        of it) ``id``, or the newest when neither is given."""
        self.config()
        if step is not None and id is not None:
            raise InvalidArgumentError("give step or id, not both")
        if id is not None:
            _s, digest, key = self.key_for_id(id)
            return self.info(key, digest, self.manifest(key))
        if step is None:
            keys = self.manifest_keys()
            info = self.newest(keys, strict=True)
            if info is None and keys:
                raise CheckpointNotFoundError(
                    f"no checkpoint of the store {self.uri} can be read: its {len(keys)} manifest(s) are damaged. "
                    f"`ckptstore verify {self.uri}` lists them; copy them again from a backup with `ckptstore cp "
                    f"BACKUP {self.uri} --all --repair`"
                )
            if info is None:
                raise CheckpointNotFoundError(f"the store {self.uri} has no checkpoints yet")
            return info
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        keys = self.manifest_keys()
        found = [k for k in keys if k[0] == step]
        if not found:
            steps = sorted({k[0] for k in keys})
            near = ", ".join(str(s) for s in steps[-10:]) or "none"
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {self.uri} (latest steps: {near})")
        infos: list[CheckpointInfo] = []
        errors: list[Exception] = []
        for _, digest, key in found:
            try:
                infos.append(self.info(key, digest, self.manifest(key)))
            except _UNREADABLE as e:
                errors.append(e)
        if not infos:
            raise errors[0]
        return max(infos, key=lambda i: (i.created_at, i.id))

    # -- changes ---------------------------------------------------------------------------
    def added(self, key: str, m: Manifest, data: bytes | None = None) -> None:
        """A manifest this process committed (its bytes ``data``): cache it, record it as
        validated, and index its objects."""
        parsed = parse_manifest_key(key)
        self._remember(key, parsed[1] if parsed is not None else "", m, data if parsed else None, later=True)
        with self._lock:
            if self._index is not None:
                self._index.add_manifest(m)
            if self._index_keys is not None:
                self._index_keys.add(key)

    def removed(self, keys: Iterable[str]) -> None:
        """Manifests this process deleted: their objects may go, so the dedup index is dropped."""
        with self._lock:
            for key in keys:
                self._manifests.pop(key, None)
                self._infos.pop(key, None)
            self.invalidate()

    def objects_deleted(self, digests: set[str]) -> None:
        """Objects a sweep deleted."""
        if digests:
            self.invalidate()

    def invalidate(self) -> None:
        """Drop the dedup index: the next save rebuilds it from the store (the one way to do so)."""
        with self._lock:
            self._index = None
            self._index_keys = None

    # -- the dedup index -------------------------------------------------------------------
    def dedup_index(self, keys: list[Key], parent: CheckpointInfo | None) -> DedupIndex:
        """The index a save writes with, given the listing it made under its lease and its parent.

        Objects in a kept index came from manifests present at the last save; if one of those is
        gone, a gc (here or elsewhere) may have deleted the objects: rebuild from the store."""
        present = {k for _s, _d, k in keys}
        with self._lock:
            prev = self._index_keys
            if self._index is not None and (prev is None or not prev <= present):
                self._index = None
            if self._index is None:
                from ..pipeline._writer import DedupIndex

                self._index = DedupIndex()
                if parent is not None:
                    self._index.add_manifest(self.manifest(parent.key))
            self._index_keys = present
            return self._index

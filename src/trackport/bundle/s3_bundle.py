"""The bucket side of a bundle at s3://bucket/prefix (docs/s3-bundles.md).

* export: the format is written into a local staging copy ($TRACKPORT_HOME/s3/<hash of
  the URL>/export) with every guarantee of a local bundle. Each run is sent as soon as it
  is renamed into place (send_run, run.json last), and its metric and artifact files are
  then turned into sparse stubs of their size: disk holds the runs in flight. finish()
  sends what the bucket lacks (upload), the root descriptor next to last and
  manifest.jsonl last, so a reader sees the old bundle or the new one. Each object carries
  its sha256 (metadata, and S3's own SHA256 checksum, which S3 verifies on receipt); large
  files go in parts. A killed export, run again, sends only what the bucket lacks.
* reading: only the root descriptor and the manifest are fetched (fetch_meta, when their
  ETag changed); bundle.location.S3Files reads the other objects as they are needed.
* extending a bundle another machine wrote: download() fetches its documents, and stubs
  for its metric and artifact files.

What was sent or fetched is recorded beside the staging copy (a local objects.jsonl: path,
size, sha256, ETag, stub). Nothing is ever appended to in the bucket: every object is
written whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from trackport import s3
from trackport._files import CHUNK_SIZE, check_relpath, is_temp_name, sha256_file, write_bytes_atomic
from trackport.config import state_home
from trackport.errors import BadInputError, StorageError, TrackportError
from trackport.bundle.layout import ARTIFACTS_DIR, MANIFEST_FILE, METRICS_FILE, ROOT_FILE, RUN_FILE, UNLISTED, walk_files
from trackport.bundle.manifest import run_dir_key

RECORD_FILE = "objects.jsonl"
META_SHA256 = "sha256"  # x-amz-meta-sha256: the object's sha256, hex


def staging_root(uri: str) -> Path:
    """Where the staging copies of the bundle at uri live (with their records beside them)."""
    url = s3.parse_s3_url(uri)
    digest = hashlib.sha256(str(url).encode("utf-8")).hexdigest()[:24]
    return state_home() / "s3" / digest


class S3Bundle:
    """The bucket side of one bundle location: checks, listing, upload and download."""

    def __init__(self, uri: str, role: str) -> None:
        """role: "export" (the staging copy an export writes) or "read" (the root and
        manifest that imports, verify and inspect fetch), kept apart so that a reader never
        disturbs a writer."""
        self.url = s3.parse_s3_url(uri)
        self.uri = str(self.url)
        self.home = staging_root(uri)
        self.staging = self.home / role
        self._client = s3.client()
        self._record_path = self.home / f"{role}-{RECORD_FILE}"
        self._log = None
        self._lock = threading.RLock()  # the record, written by the workers that send runs
        self._record: dict[str, dict] = self._load_record()

    # -- checks -------------------------------------------------------------------------
    def _fail(self, exc: BaseException, what: str) -> TrackportError:
        return s3.s3_error(exc, f"{what} {self.uri}")

    def check_bucket(self) -> None:
        """The bucket is there and these credentials may see it."""
        try:
            self._client.head_bucket(Bucket=self.url.bucket)
        except Exception as exc:  # noqa: BLE001 - botocore's errors, mapped to one line
            raise self._fail(exc, "reading") from None

    def check_writable(self) -> None:
        """A probe object written and deleted: a denied write is found before anything
        of the bundle is sent."""
        probe = self.url.key(f".trackport-probe-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            self._client.put_object(Bucket=self.url.bucket, Key=probe, Body=b"")
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "writing into") from None
        try:
            self._client.delete_object(Bucket=self.url.bucket, Key=probe)
        except Exception:  # noqa: BLE001 - a write-only policy: the empty probe stays, harmless
            pass

    def holds_bundle(self) -> bool:
        return self._head(ROOT_FILE) is not None

    def _prefix(self) -> str:
        return f"{self.url.prefix}/" if self.url.prefix else ""

    def _head(self, rel: str) -> dict | None:
        try:
            return self._client.head_object(Bucket=self.url.bucket, Key=self.url.key(rel))
        except Exception as exc:  # noqa: BLE001
            if s3.is_missing(exc):
                return None
            raise self._fail(exc, "reading") from None

    # -- listing ------------------------------------------------------------------------
    def objects(self) -> Iterator[tuple[str, int, str]]:
        """(path in the bundle, size, ETag) of every object under the prefix."""
        prefix = self._prefix()
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.url.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    rel = item["Key"][len(prefix):]
                    if rel and not rel.startswith(".trackport-probe-"):
                        yield rel, item["Size"], item["ETag"]
        except TrackportError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, "listing") from None

    # -- upload -------------------------------------------------------------------------
    def upload(self) -> dict[str, int]:
        """Every file of the staging copy the bucket lacks; the root descriptor next to
        last, the manifest last. Returns {"sent": n, "kept": n, "bytes": n}."""
        listed = {rel: (size, etag) for rel, size, etag in self.objects()}
        files = [(rel, entry.stat(follow_symlinks=False).st_size) for rel, entry in walk_files(self.staging) if _sent(rel)]
        last = [f for f in files if f[0] in (ROOT_FILE, MANIFEST_FILE)]
        ordered = [f for f in files if f[0] not in (ROOT_FILE, MANIFEST_FILE)]
        ordered += sorted(last, key=lambda f: f[0] == MANIFEST_FILE)
        counts = {"sent": 0, "kept": 0, "bytes": 0}
        for rel, size in ordered:
            sent = self._send(rel, size, listed.get(rel))
            counts["sent" if sent else "kept"] += 1
            counts["bytes"] += size if sent else 0
            if _recorded_in_run_json(rel) and not self._record[rel].get("stub"):
                self._stub(rel, size)  # a run published just before a kill, sent only now
        return counts

    def _send(self, rel: str, size: int, there: tuple[int, str] | None) -> bool:
        """The staged file at rel into the bucket unless it holds it already; True when sent."""
        known = self._record.get(rel)
        if known is not None and known.get("stub"):  # sent, and its bytes dropped from the staging copy
            if there is None or there[1] != known["etag"]:
                raise StorageError(
                    f"{self.uri}/{rel} was sent by this export but the bucket no longer holds it; export into a new prefix"
                )
            return False
        local = self.staging.joinpath(*rel.split("/"))
        sha, _ = sha256_file(local)
        if there and known and (known["size"], known["sha256"], known["etag"]) == (size, sha, there[1]):
            return False
        if there and not known and there[0] == size and self._sha_of(rel) == sha:
            self._remember(rel, size, sha, there[1])
            return False
        self._remember(rel, size, sha, self._put(rel, local, sha))
        return True

    def send_run(self, run_dir: Path) -> None:
        """A run directory just published in the staging copy, into the bucket (run.json
        last), then its metric and artifact files emptied to sparse files of their size:
        what the manifest needs of them (size, and the sha256 run.json records) stays, the
        bytes do not, so an export holds on disk only the runs in flight. A stub is
        recorded before it is made, and never sent (upload)."""
        rel_dir = run_dir.relative_to(self.staging).as_posix()
        files = sorted((f"{rel_dir}/{rel}", entry.stat().st_size) for rel, entry in walk_files(run_dir))
        files.sort(key=lambda f: f[0].endswith(f"/{RUN_FILE}"))
        for rel, size in files:
            self._send(rel, size, None)
        for rel, size in files:
            if _recorded_in_run_json(rel) and self._record.get(rel, {}).get("etag"):
                self._stub(rel, size)

    def _stub(self, rel: str, size: int) -> None:
        with self._lock:
            self._record[rel] = dict(self._record[rel], stub=True)
            self._append(self._record[rel])
        sparse = self.home / f"stub-{uuid.uuid4().hex}"  # made whole, then renamed: a kill leaves no short file
        with open(sparse, "wb") as f:
            f.truncate(size)
        os.replace(sparse, self.staging.joinpath(*rel.split("/")))

    def _sha_of(self, rel: str) -> str | None:
        head = self._head(rel)
        return None if head is None else (head.get("Metadata") or {}).get(META_SHA256)

    def _put(self, rel: str, local: Path, sha: str) -> str:
        key = self.url.key(rel)
        extra: dict[str, Any] = {"Metadata": {META_SHA256: sha}}
        try:
            if local.stat().st_size < s3.MULTIPART_THRESHOLD:
                with open(local, "rb") as f:
                    answer = self._client.put_object(
                        Bucket=self.url.bucket, Key=key, Body=f, ChecksumAlgorithm="SHA256", **extra
                    )
                return answer["ETag"]
            self._client.upload_file(str(local), self.url.bucket, key, ExtraArgs=extra, Config=s3.transfer_config())
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, f"writing {rel} into") from None
        head = self._head(rel)
        return head["ETag"] if head else ""

    # -- reading ------------------------------------------------------------------------
    def fetch_meta(self) -> Path:
        """The root descriptor and the manifest into the read copy (each fetched only when
        its ETag changed): what an index of the bundle is built from. The other files are
        read from the bucket as they are needed (bundle/location.S3Files)."""
        root_head = self._head(ROOT_FILE)
        if root_head is None:
            self.check_bucket()
            raise BadInputError(f"{self.uri} holds no trackport bundle ({ROOT_FILE} is missing); check the URL")
        manifest_head = self._head(MANIFEST_FILE)
        for rel, head in ((ROOT_FILE, root_head), (MANIFEST_FILE, manifest_head)):
            local = self.staging / rel
            if head is None:
                local.unlink(missing_ok=True)
                self._forget(rel)
                continue
            if local.is_file() and self._held(rel, local, head["ContentLength"], head["ETag"]):
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "wb") as f:
                self.read_into(rel, f)
            self._remember(rel, head["ContentLength"], sha256_file(local)[0], head["ETag"])
        return self.staging

    def read_into(self, rel: str, f: BinaryIO) -> None:
        """The object's bytes into f (parts in parallel for a large one). OSError when S3
        refuses: the reader reports it as that file's problem."""
        try:
            self._client.download_fileobj(self.url.bucket, self.url.key(rel), f, Config=s3.transfer_config())
        except Exception as exc:  # noqa: BLE001
            raise OSError(0, str(self._fail(exc, f"reading {rel} from"))) from None

    def stream(self, rel: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.url.bucket, Key=self.url.key(rel))["Body"]
            yield from body.iter_chunks(CHUNK_SIZE)
        except Exception as exc:  # noqa: BLE001
            raise OSError(0, str(self._fail(exc, f"reading {rel} from"))) from None

    # -- download -----------------------------------------------------------------------
    def download(self) -> dict[str, int]:
        """The bucket's bundle into the staging copy, so an export can extend it: every
        document whole, the metric and artifact files of runs as stubs (sparse files of
        their size, recorded as sent: run.json records their sha256). Local files the
        bucket does not hold are removed (called when the bucket holds a bundle: root_head()).
        Returns {"fetched": n, "stubs": n}."""
        counts = {"fetched": 0, "stubs": 0}
        seen = set()
        for rel, size, etag in self.objects():
            try:
                local = self.staging.joinpath(*check_relpath(rel).split("/"))
            except ValueError as exc:
                raise BadInputError(f"{self.uri}: an object {rel!r} has an unsafe name ({exc}); refusing the bundle") from None
            seen.add(rel)
            local.parent.mkdir(parents=True, exist_ok=True)
            if _recorded_in_run_json(rel):
                local.unlink(missing_ok=True)
                local.touch()
                self._record[rel] = {"path": rel, "size": size, "sha256": None, "etag": etag}
                self._stub(rel, size)
                counts["stubs"] += 1
                continue
            with open(local, "wb") as f:
                self.read_into(rel, f)
            self._remember(rel, size, sha256_file(local)[0], etag)
            counts["fetched"] += 1
        for rel, _entry in list(walk_files(self.staging)) if self.staging.is_dir() else ():
            if rel not in seen and _sent(rel):
                self.staging.joinpath(*rel.split("/")).unlink(missing_ok=True)
                self._forget(rel)
        return counts

    def _held(self, rel: str, local: Path, size: int, etag: str) -> bool:
        """The local file holds the object's bytes: recorded with its ETag, or (the record
        lost to a kill) of the sha256 the object carries."""
        known = self._record.get(rel)
        if known is not None:
            return (known["size"], known["etag"]) == (size, etag)
        sha = self._sha_of(rel)
        if sha is None or sha256_file(local)[0] != sha:
            return False
        self._remember(rel, size, sha, etag)
        return True

    # -- the record ---------------------------------------------------------------------
    # objects.jsonl beside the staging copy (local: appended a line per object as it is
    # sent or fetched, so a kill loses at most the last one; compacted on close).
    def _load_record(self) -> dict[str, dict]:
        record: dict[str, dict] = {}
        try:
            with open(self._record_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        record.pop(item["path"], None) if item.get("gone") else record.__setitem__(item["path"], item)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue  # the torn last line of a killed process
        except OSError:
            pass
        return record

    def _append(self, item: dict) -> None:
        if self._log is None:
            self.home.mkdir(parents=True, exist_ok=True)
            self._log = open(self._record_path, "a", encoding="utf-8")
        self._log.write(json.dumps(item, sort_keys=True) + "\n")
        self._log.flush()

    def _remember(self, rel: str, size: int, sha: str, etag: str) -> None:
        with self._lock:
            self._record[rel] = {"path": rel, "size": size, "sha256": sha, "etag": etag}
            self._append(self._record[rel])

    def _forget(self, rel: str) -> None:
        with self._lock:
            if self._record.pop(rel, None) is not None:
                self._append({"path": rel, "gone": True})

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.home.is_dir():
            lines = "".join(json.dumps(item, sort_keys=True) + "\n" for item in self._record.values())
            write_bytes_atomic(self._record_path, lines.encode("utf-8"))

    def root_head(self) -> dict | None:
        """HeadObject of the bucket's root descriptor; None when the prefix holds no bundle."""
        return self._head(ROOT_FILE)

    def sent_root(self, head: dict) -> bool:
        """That root descriptor (head: root_head()) is the one this staging copy sent
        (nobody replaced the bundle since): the staging copy is then the newer truth."""
        known = self._record.get(ROOT_FILE)
        return known is not None and known["etag"] == head["ETag"]

    def foreign_objects(self) -> bool:
        """Objects under a prefix that holds no bundle that this staging copy did not send
        (an object sent just before a kill, unrecorded, is known by its sha256)."""
        for rel, size, etag in self.objects():
            if rel in self._record:
                continue
            try:
                local = self.staging.joinpath(*check_relpath(rel).split("/"))
            except ValueError:
                return True
            if not (local.is_file() and local.stat().st_size == size and self._held(rel, local, size, etag)):
                return True
        return False


def _recorded_in_run_json(rel: str) -> bool:
    """A run's metric or artifact file, whose size and sha256 its run.json records."""
    split = run_dir_key(rel)
    return split is not None and (split[1] == METRICS_FILE or split[1].startswith(f"{ARTIFACTS_DIR}/"))


def _sent(rel: str) -> bool:
    """A file of the staging copy that belongs in the bucket (not the lock, not a temp)."""
    return rel not in UNLISTED and not is_temp_name(rel.rsplit("/", 1)[-1])

"""MLflow 3's model objects written into a local sqlite store: logged models (rows and
files) and the model registry (registered models, prompts, versions, aliases), with their
ids and version numbers kept.

Every unit is one call of the group-commit writer, so it is committed whole or not at all;
a logged model's folder is claimed like a run's (run_folders) and filled before its rows
are committed. A registered model this sink writes carries provenance.SOURCE_UNIT_TAG, so
that a later transfer tells it from one the target held before (someone else's), which
the store's `on_existing_model` decides about: fail, skip it (and its versions), or append
the versions after the target's own.

Numbers are kept by writing each version at its own number, and MLflow's rows of deleted
versions (stage Deleted_Internal, fields redacted) for the numbers the source deleted, so
the target numbers new versions as the source would. A version already at its number is
the same version when its creation time is the source's (kept exactly).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from trackport import models
from trackport.errors import UnitError
from trackport.kinds import Unit, ref_kind
from trackport.provenance import SOURCE_UNIT_TAG, is_mlmodel, rewrite_mlmodel, rewrite_version_source
from trackport.stores.base import UnitContent, UnitWriteResult
from trackport.stores.mlflow_db.models import DEFAULT_WORKSPACE, DELETED_VERSION_STAGE, NO_STAGE
from trackport.stores.mlflow_db.tables import LOGGED_MODEL_TABLES, REGISTRY_TABLES
from trackport.stores.sqlite.rows import Rows, now_or
from trackport.stores.sqlite.run_folders import RunFolders
from trackport.stores.sqlite.schema import append_to_uri_path

LOGGED_MODEL = "logged model"  # how messages and folder claims name the kind
# What MLflow writes over a deleted version's fields (model_registry/sqlalchemy_store.py).
REDACTED = {"source": "REDACTED-SOURCE-PATH", "run_id": "REDACTED-RUN-ID", "run_link": "REDACTED-RUN-LINK"}
_ABSENT, _OURS, _FOREIGN = "absent", "ours", "foreign"
Query = Callable[[str, tuple], list]  # a read: the store's committed view, or the writer's cursor


class ModelWriting:
    """find_/lookup_/put_ methods of the three model kinds, for SqliteStore: it gives the
    writer, rows, folders and reads below."""

    # What SqliteStore gives: its URI and policy, its rows, folders and writer, and reads of
    # committed rows on the calling thread's connection.
    uri: str
    on_existing_model: str
    _rows: Rows
    _folders: RunFolders
    _check_writable: Callable[[], None]
    _read: Callable[[str, tuple], list]
    _write: Callable[[Callable[[sqlite3.Cursor], Any], str], Any]  # (unit, what it writes): committed
    _experiment_artifact_location: Callable[[int], str | None]
    _unit_folder: Callable[..., Path | None]  # (artifact URI, unit id, files, what): stores.sqlite.places

    def _has_tables(self, tables: frozenset[str]) -> bool:
        return all(self._rows.columns.get(t) for t in tables)

    def _require(self, tables: frozenset[str], what: str) -> None:
        if not self._has_tables(tables):
            raise UnitError(f"{what}: {self.uri} has an MLflow schema without {', '.join(sorted(tables))}")

    def _workspace(self, table: str) -> dict[str, str]:
        return {"workspace": DEFAULT_WORKSPACE} if "workspace" in self._rows.columns[table] else {}

    def _in_workspace(self, table: str) -> str:
        return " AND workspace = 'default'" if "workspace" in self._rows.columns[table] else ""

    # ---------------------------------------------------------------- logged models

    def find_logged_model(self, unit: Unit, target_experiment_id: str | None) -> str | None:
        return self.lookup_logged_model(unit.unit_id, target_experiment_id)

    def lookup_logged_model(self, source_id: str, target_experiment_id: str | None) -> str | None:
        """The model's id when its row is in the target (a model's rows are committed whole)."""
        if not self._has_tables(LOGGED_MODEL_TABLES):
            return None
        rows = self._read("SELECT model_id FROM logged_models WHERE model_id = ?", (source_id,))
        return rows[0][0] if rows else None

    def put_logged_model(self, unit: Unit, target_experiment_id: str, content: UnitContent) -> UnitWriteResult:
        self._check_writable()
        model_id = unit.unit_id
        what = f"{LOGGED_MODEL} {model_id}"
        self._require(LOGGED_MODEL_TABLES, what)
        exp_id = int(target_experiment_id)
        location = self._experiment_artifact_location(exp_id)
        if location is None:
            raise UnitError(f"{what}: target experiment {exp_id} does not exist")
        if self.lookup_logged_model(model_id, target_experiment_id) is not None:
            raise UnitError(f"{what} already exists in {self.uri}")
        artifact_location = append_to_uri_path(location, "models", model_id, "artifacts")
        result = UnitWriteResult(model_id)
        # The files are copied before the writer is asked, so a slow source holds up no other unit.
        files = list(content.artifact_files())
        folder = self._unit_folder(artifact_location, model_id, files, LOGGED_MODEL)
        if files:
            rewrite = _mlmodel_rewrite(unit, artifact_location)
            self._folders.write(model_id, folder, content, files, result, what=LOGGED_MODEL, rewrite=rewrite)
        elif folder is not None:
            self._folders.refuse_foreign(model_id, folder, LOGGED_MODEL)
        try:
            self._write(lambda cursor: self._rows.insert_logged_model(cursor, unit, exp_id, artifact_location), what)
        except BaseException:
            if files:
                self._folders.undo(model_id, folder)
            raise
        if files:
            self._folders.committed(model_id)
        return result

    # ---------------------------------------------------------------- registered models

    def _model_state(self, query: Query, name: str) -> str:
        """Whether the target holds a registered model of that name, and whose it is: ours
        (it carries the provenance tag this sink writes) or someone else's."""
        if not query(f"SELECT 1 FROM registered_models WHERE name = ?{self._in_workspace('registered_models')}", (name,)):
            return _ABSENT
        tagged = query(
            f"SELECT 1 FROM registered_model_tags WHERE name = ? AND key = ?{self._in_workspace('registered_model_tags')}",
            (name, SOURCE_UNIT_TAG),
        )
        return _OURS if tagged else _FOREIGN

    def find_registered_model(self, unit: Unit, target_experiment_id: str | None = None) -> str | None:
        """Its name when the target holds the model as this sink wrote it; someone else's
        model of that name is left to put_registered_model (on_existing_model)."""
        if not self._has_tables(REGISTRY_TABLES):
            return None
        return unit.unit_id if self._model_state(self._read, unit.unit_id) == _OURS else None

    def lookup_registered_model(self, source_id: str, target_experiment_id: str | None = None) -> str | None:
        if not self._has_tables(REGISTRY_TABLES):
            return None
        return source_id if self._model_state(self._read, source_id) != _ABSENT else None

    def put_registered_model(self, unit: Unit, target_experiment_id: str | None = None) -> UnitWriteResult:
        self._check_writable()
        name = unit.unit_id
        self._require(REGISTRY_TABLES, f"registered model {name!r}")
        return self._write(lambda cursor: self._insert_registered_model(cursor, unit), f"registered model {name!r}")

    def _insert_registered_model(self, cursor: sqlite3.Cursor, unit: Unit) -> UnitWriteResult:
        name, body = unit.unit_id, unit.body
        state = self._model_state(lambda sql, args: cursor.execute(sql, args).fetchall(), name)
        if state == _OURS:
            return UnitWriteResult(name, "skipped", "already complete in the target")
        if state == _FOREIGN:
            return UnitWriteResult(name, "skipped", self._foreign_model(name))
        self._rows.insert(cursor, "registered_models", [{
            "name": name,
            "creation_time": now_or(body.get("creation_timestamp")),
            "last_updated_time": now_or(body.get("last_updated_timestamp")),
            "description": body.get("description"),
            **self._workspace("registered_models"),
        }])
        experiments = {
            unit.source_refs[n]: target for n, target in unit.refs.items()
            if ref_kind(n) == "experiment" and n in unit.source_refs and n not in unit.missing
        }
        tags = {**models.relink_experiments(dict(body.get("tags", {})), experiments), SOURCE_UNIT_TAG: name}
        workspace = self._workspace("registered_model_tags")
        self._rows.insert(cursor, "registered_model_tags", [
            {"name": name, "key": k, "value": v, **workspace} for k, v in tags.items()
        ])
        return UnitWriteResult(name)

    def _foreign_model(self, name: str) -> str:
        """What on_existing_model makes of someone else's model of that name: UnitError
        ("fail"), else the reason it is skipped ("skip": with its versions; "append")."""
        policy = self.on_existing_model
        if policy == "skip":
            return (f"the target's registered model {name!r} was not written by trackport"
                    " (--on-existing-model skip): it and its versions are left as they are")
        if policy == "append":
            return (f"the target's registered model {name!r} was not written by trackport"
                    " (--on-existing-model append): it is left as it is, and the versions are appended to it")
        raise UnitError(
            f"registered model {name!r} exists in {self.uri} and was not written by trackport: pass"
            " --on-existing-model skip to leave it (and its versions) out, or append to add the versions after its own"
        )

    # ---------------------------------------------------------------- model versions

    def find_model_version(self, unit: Unit, target_experiment_id: str | None = None) -> str | None:
        return self._version_in(self._read, unit.refs.get("registered_model", ""), unit.unit_id,
                                unit.body.get("creation_timestamp"))

    def lookup_model_version(self, source_id: str, target_experiment_id: str | None = None) -> str | None:
        return self._version_in(self._read, models.split_version_id(source_id)[0], source_id, None)

    def _version_in(self, query: Query, name: str, source_id: str, created: int | None) -> str | None:
        """The target's copy of a source version: in a model this sink wrote, the version of
        the same number (with the source's creation time, when it is known); in someone
        else's, the version appended with the source version's id as its provenance tag."""
        if not self._has_tables(REGISTRY_TABLES):
            return None
        state = self._model_state(query, name)
        if state == _OURS:
            number = models.split_version_id(source_id)[1]
            rows = query(
                f"SELECT creation_time FROM model_versions WHERE name = ? AND version = ? AND current_stage != ?"
                f"{self._in_workspace('model_versions')}", (name, number, DELETED_VERSION_STAGE),
            )
            return models.version_id(name, number) if rows and (created is None or rows[0][0] == created) else None
        if state == _FOREIGN:
            rows = query(
                "SELECT t.version FROM model_version_tags t JOIN model_versions v ON v.name = t.name AND v.version = t.version"
                " WHERE t.name = ? AND t.key = ? AND t.value = ? AND v.current_stage != ?",
                (name, SOURCE_UNIT_TAG, source_id, DELETED_VERSION_STAGE),
            )
            return models.version_id(name, rows[0][0]) if rows else None
        return None

    def put_model_version(self, unit: Unit, target_experiment_id: str | None = None) -> UnitWriteResult:
        self._check_writable()
        self._require(REGISTRY_TABLES, f"model version {unit.unit_id}")
        run_uri, model_location = self._artifact_roots(unit)
        source = rewrite_version_source(unit.body["source"], unit.id_changes(), run_uri, model_location)
        # What MLflow's registry stores as the files of a version: a logged model's location
        # for a models:/<id> source, else the source itself.
        storage = model_location if model_location and models.model_id_in_source(source) else source
        return self._write(lambda cursor: self._insert_version(cursor, unit, source, storage), f"model version {unit.unit_id}")

    def _artifact_roots(self, unit: Unit) -> tuple[str | None, str | None]:
        """The artifact URI of the version's run and location of its logged model in the target."""
        run_id, model_id = unit.target("run"), unit.target("logged_model")
        runs = self._read("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)) if run_id else []
        found = []
        if model_id and self._has_tables(LOGGED_MODEL_TABLES):
            found = self._read("SELECT artifact_location FROM logged_models WHERE model_id = ?", (model_id,))
        return (runs[0][0] if runs else None), (found[0][0] if found else None)

    def _insert_version(self, cursor: sqlite3.Cursor, unit: Unit, source: str, storage: str) -> UnitWriteResult:
        body = unit.body
        name, number = unit.refs["registered_model"], int(body["version"])
        query: Query = lambda sql, args: cursor.execute(sql, args).fetchall()  # noqa: E731
        state = self._model_state(query, name)
        if state == _ABSENT:
            raise UnitError(f"model version {unit.unit_id}: registered model {name!r} is not in {self.uri}")
        existing = self._version_in(query, name, unit.unit_id, body.get("creation_timestamp"))
        if existing is not None:
            return UnitWriteResult(existing, "skipped", "already complete in the target")
        tags = dict(body.get("tags", {}))
        losses: list[str] = []
        if state == _FOREIGN:
            reason = self._foreign_model(name)  # UnitError with "fail"
            if self.on_existing_model == "skip":
                return UnitWriteResult(unit.unit_id, "skipped", reason)
            appended = self._next_number(cursor, name)
            if appended != number:
                losses.append(f"version {number} became {appended} (appended to the target's own {name!r})")
            number, tags[SOURCE_UNIT_TAG] = appended, unit.unit_id
        else:
            taken = self._numbers(cursor, name)
            if number in taken:
                raise UnitError(
                    f"model version {unit.unit_id}: {name!r} in {self.uri} holds another version {number}"
                    " (made there, or deleted there), so this one cannot keep its number"
                )
            for gone in body.get("deleted_before", []) + body.get("deleted_after", []):
                if gone not in taken and gone != number:
                    self._insert_deleted_version(cursor, name, gone)
                    taken.add(gone)
        self._rows.insert(cursor, "model_versions", [{
            "name": name,
            "version": number,
            "creation_time": now_or(body.get("creation_timestamp")),
            "last_updated_time": now_or(body.get("last_updated_timestamp")),
            "description": body.get("description"),
            "user_id": body.get("user_id"),
            "current_stage": body.get("current_stage") or NO_STAGE,
            "source": source,
            "run_id": unit.target("run"),
            "status": body.get("status") or "READY",
            "status_message": body.get("status_message"),
            "run_link": body.get("run_link"),
            "storage_location": storage,
            **self._workspace("model_versions"),
        }])
        self._rows.insert(cursor, "model_version_tags", [
            {"name": name, "version": number, "key": k, "value": v, **self._workspace("model_version_tags")}
            for k, v in tags.items()
        ])
        losses += self._set_aliases(cursor, name, number, body.get("aliases", []), move=state == _OURS)
        return UnitWriteResult(models.version_id(name, number), losses=losses)

    def _numbers(self, cursor: sqlite3.Cursor, name: str) -> set[int]:
        """Every version number the model holds, deleted ones (Deleted_Internal rows) too."""
        sql = f"SELECT version FROM model_versions WHERE name = ?{self._in_workspace('model_versions')}"
        return {int(v) for (v,) in cursor.execute(sql, (name,))}

    def _next_number(self, cursor: sqlite3.Cursor, name: str) -> int:
        """The number MLflow would give the model's next version: max + 1, deleted ones counted."""
        return max(self._numbers(cursor, name), default=0) + 1

    def _insert_deleted_version(self, cursor: sqlite3.Cursor, name: str, number: int) -> None:
        """The row MLflow keeps of a deleted version, so the number stays used; what the
        source no longer knows of it (times, where its files were) is left empty."""
        self._rows.insert(cursor, "model_versions", [{
            "name": name, "version": number, "current_stage": DELETED_VERSION_STAGE, "status": "READY",
            **REDACTED, **self._workspace("model_versions"),
        }])

    def _set_aliases(self, cursor: sqlite3.Cursor, name: str, number: int, aliases: list[str], *, move: bool) -> list[str]:
        """The version's aliases (reserved names too: a sqlite store holds them). An alias the
        target has on another version is moved in a model this sink wrote (the source moved
        it), and left where it is in someone else's (a loss)."""
        if not self._rows.columns["registered_model_aliases"]:
            return [f"aliases {', '.join(aliases)}: the target's schema has no aliases"] if aliases else []
        losses, rows = [], []
        where = f"name = ? AND alias = ?{self._in_workspace('registered_model_aliases')}"
        for alias in aliases:
            held = cursor.execute(f"SELECT version FROM registered_model_aliases WHERE {where}", (name, alias)).fetchone()
            if held is not None and int(held[0]) != number:
                if not move:
                    losses.append(f"alias {alias!r} stays on the target's version {held[0]} of {name!r}, not moved to {number}")
                    continue
                cursor.execute(f"DELETE FROM registered_model_aliases WHERE {where}", (name, alias))
            elif held is not None:
                continue
            rows.append({"name": name, "alias": alias, "version": number, **self._workspace("registered_model_aliases")})
        self._rows.insert(cursor, "registered_model_aliases", rows)
        return losses


def _mlmodel_rewrite(unit: Unit, artifact_location: str) -> Callable[[str], Callable[[bytes], bytes] | None]:
    """For the model's MLmodel files: the ids and artifact location they name, as the target has them."""
    ids = unit.id_changes()
    locations = {unit.body.get("artifact_location") or "": artifact_location}

    def rewrite(path: str) -> Callable[[bytes], bytes] | None:
        return (lambda data: rewrite_mlmodel(data, ids, locations)) if is_mlmodel(path) else None

    return rewrite

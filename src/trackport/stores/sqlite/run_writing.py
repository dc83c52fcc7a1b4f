"""Writing a run into MLflow's SQL tables, shared by the sinks that write them directly: a
local or server's sqlite database (sqlite.store) and a server's PostgreSQL or MySQL
database (serverdb.store). What differs between them is how the rows reach the database:
`_write_run_rows`, inside one transaction (or savepoint) per run.

The run's files and metric points are read from the source before that transaction
begins, so no slow source holds it open; the files are in place before the rows are
committed, and removed if they are not (run_folders).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.domain import Run, SourceRunId, TargetExperimentId, TargetRunId
from trackport.errors import UnitError
from trackport.stores.base import RunContent, RunWriteResult
from trackport.stores.sqlite.metrics import PreparedPoints, collapsed_loss, prepare_points
from trackport.stores.sqlite.models import LOGGED_MODEL
from trackport.stores.sqlite.places import unit_folder
from trackport.stores.sqlite.schema import append_to_uri_path


class SqlRunWriting:
    """put_run and the lookups around it. The store gives: uri, _config, _folders (RunFolders),
    _destination, _artifact_locations (a dict), _read(sql, params), _check_writable(),
    state_dir(), lookup_logged_model(...) and _write_run_rows."""

    uri: str
    _config: Any
    _folders: Any
    _destination: Path | None
    _artifact_locations: dict[int, str]

    def _write_run_rows(self, run: Run, exp_id: int, artifact_uri: str, points: PreparedPoints) -> tuple[int, list[str]]:
        """The run's rows and points committed: (points stored, losses to record)."""
        raise NotImplementedError

    def find_run(self, run: Run, target_experiment_id: TargetExperimentId) -> TargetRunId | None:
        return self.lookup_run(SourceRunId(run.run_id), target_experiment_id)

    def lookup_run(self, source_run_id: SourceRunId, target_experiment_id: TargetExperimentId | None) -> TargetRunId | None:
        rows = self._read("SELECT run_uuid FROM runs WHERE run_uuid = ?", (source_run_id,))
        return TargetRunId(rows[0][0]) if rows else None

    def _committed(self, kind: str, unit_id: str) -> bool:
        """Whether the run or logged model a folder claim names was committed."""
        if kind == LOGGED_MODEL:
            return self.lookup_logged_model(unit_id, None) is not None
        return self.lookup_run(SourceRunId(unit_id), None) is not None

    def _unit_folder(self, artifact_uri: str, unit_id: str, files: list, what: str = "run") -> Path | None:
        """The folder of a run or logged model (its artifacts/ folder's parent) where its
        artifacts are local; a tracking server's `mlflow-artifacts:` locations under the
        artifacts destination the target URI names (places)."""
        return unit_folder(artifact_uri, unit_id, files, what, self._destination)

    def _experiment_artifact_location(self, exp_id: int) -> str | None:
        location = self._artifact_locations.get(exp_id)
        if location is None:
            rows = self._read("SELECT artifact_location FROM experiments WHERE experiment_id = ?", (exp_id,))
            if not rows:
                return None
            location = self._artifact_locations[exp_id] = rows[0][0]
        return location

    def put_run(self, run: Run, target_experiment_id: TargetExperimentId, content: RunContent) -> RunWriteResult:
        self._check_writable()
        exp_id = int(target_experiment_id)
        location = self._experiment_artifact_location(exp_id)
        if location is None:
            raise UnitError(f"run {run.run_id}: target experiment {exp_id} does not exist")
        if self.find_run(run, target_experiment_id) is not None:
            raise UnitError(f"run {run.run_id} already exists in {self.uri}")
        artifact_uri = append_to_uri_path(location, run.run_id, "artifacts")
        result = RunWriteResult(target_run_id=TargetRunId(run.run_id))
        files = list(content.artifact_files())
        folder = self._unit_folder(artifact_uri, run.run_id, files)
        if files:
            self._folders.write(run.run_id, folder, content, files, result)
        elif folder is not None:
            self._folders.refuse_foreign(run.run_id, folder)
        try:
            with prepare_points(content.metric_batches(), self.state_dir(), self._config.sqlite_in_memory_points) as points:
                result.metric_points, losses = self._write_run_rows(run, exp_id, artifact_uri, points)
        except BaseException:
            if files:
                self._folders.undo(run.run_id, folder)
            raise
        if files:
            self._folders.committed(run.run_id)
        loss = collapsed_loss(points, result.metric_points)
        if loss is not None:
            result.losses.append(loss)
        result.losses += losses
        return result

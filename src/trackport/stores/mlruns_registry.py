"""The model registry of a legacy MLflow file store (`mlruns/models/<name>/`), and what the
file store holds that trackport does not read from it (traces): the part of the mlruns
reader (stores.local_mlruns) that is not experiments, runs and logged models."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from trackport.kinds import Unit
from trackport.models import VersionFields, model_id_in_source, name_matches, registered_model_unit, version_units
from trackport.stores.base import Selection, Unreadable

MODELS = "models"  # an experiment's logged models, and (at the root) the model registry
_DELETED_VERSION = "Deleted_Internal"
TRACES = "traces"  # an experiment's traces: traces/<trace id>/trace_info.yaml


def read_key_values(directory: Path) -> dict[str, str]:
    """params/ or tags/: one file per key, keys with '/' as sub-directories."""
    if not directory.is_dir():
        return {}
    out: dict[str, str] = {}
    for file in sorted(directory.rglob("*")):
        if file.is_file():
            out[file.relative_to(directory).as_posix()] = file.read_text(encoding="utf-8")
    return out


class MlrunsRegistry:
    """Registered models and versions of an mlruns folder; a mixin of MlrunsStore, which
    gives root, _load_meta, _yaml, _all_experiments and _locate_runs."""

    def not_read(self) -> list[str]:
        """What the folder holds that this reader does not read (its traces), one line
        each, said before anything is written."""
        traces = sum(
            1 for _, exp_dir in self._all_experiments() for _ in (exp_dir / TRACES).glob("*/trace_info.yaml")
        )
        if not traces:
            return []
        return [
            f"traces: the folder holds {traces:,}, which are not read from an mlruns folder; serve it with"
            " `MLFLOW_ALLOW_FILE_STORE=true mlflow server --backend-store-uri <folder>` and export through"
            " the server (http://...)"
        ]

    def _registered_dirs(self, selection: Selection) -> list[Path]:
        root = self.root / MODELS
        if not root.is_dir():
            return []
        found = [d for d in sorted(root.iterdir()) if (d / "meta.yaml").is_file()]
        return [d for d in found if not selection.models or name_matches(d.name, selection.models)]

    def iter_registered_models(self, selection: Selection) -> Iterator[Unit | Unreadable]:
        """Every registered model and prompt, by name."""
        for model_dir in self._registered_dirs(selection):
            try:
                meta = self._load_meta(model_dir / "meta.yaml")
                yield registered_model_unit(
                    str(meta.get("name") or model_dir.name), meta.get("description"), read_key_values(model_dir / "tags"),
                    meta.get("creation_timestamp"), meta.get("last_updated_timestamp"),
                )
            except (OSError, ValueError, self._yaml.YAMLError) as exc:
                yield Unreadable("registered_model", model_dir.name, f"{model_dir}: {exc}")

    def iter_model_versions(self, selection: Selection) -> Iterator[Unit | Unreadable]:
        """The live versions of each registered model, by name; deleted versions keep their
        folder (stage Deleted_Internal), so their numbers are known."""
        model_experiments = {  # logged model id -> its experiment
            d.name: e.experiment_id for e, exp_dir in self._all_experiments() for d in exp_dir.glob(f"{MODELS}/*") if d.is_dir()
        }
        for model_dir in self._registered_dirs(selection):
            name = model_dir.name
            try:
                metas = [(d, self._load_meta(d / "meta.yaml")) for d in sorted(model_dir.glob("version-*")) if (d / "meta.yaml").is_file()]
                aliases: dict[int, list[str]] = {}
                for alias, number in (self._load_meta(model_dir / "meta.yaml").get("aliases") or {}).items():
                    aliases.setdefault(int(number), []).append(str(alias))
                runs = self._locate_runs([str(m["run_id"]) for _, m in metas if m.get("run_id")])
                versions, deleted = [], []
                for version_dir, meta in metas:
                    number = int(meta["version"])
                    if meta.get("current_stage") == _DELETED_VERSION:
                        deleted.append(number)
                        continue
                    model_id = meta.get("model_id") or model_id_in_source(meta.get("source"))
                    versions.append(VersionFields(
                        version=number, source=str(meta.get("source") or ""), run_id=meta.get("run_id"), model_id=model_id,
                        experiment_id=model_experiments.get(model_id or "") or runs.get(meta.get("run_id") or ""),
                        description=meta.get("description"), tags=read_key_values(version_dir / "tags"),
                        aliases=aliases.get(number, []), run_link=meta.get("run_link"), status=meta.get("status") or "READY",
                        status_message=meta.get("status_message"), current_stage=_stage_or_none(meta.get("current_stage")),
                        user_id=meta.get("user_id"), creation_timestamp=meta.get("creation_timestamp"),
                        last_updated_timestamp=meta.get("last_updated_timestamp"),
                    ))
            except (OSError, ValueError, KeyError, self._yaml.YAMLError) as exc:
                yield Unreadable("model_version", f"{name}/0", f"{model_dir}: {exc}")
                continue
            yield from version_units(name, versions, deleted)


def _stage_or_none(stage: str | None) -> str | None:
    """A version's stage as bodies hold it: MLflow's "None" (no stage) as null."""
    return None if not stage or stage == "None" else stage

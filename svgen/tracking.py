"""Experiment tracking behind one small protocol; MLflow is the backend, ranks other than 0 get
the null tracker (STYLE.md, convention 7)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict) -> None: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_dataset(self, name: str, uri: str, digest: str) -> None: ...
    def supersede(self, earlier_run_id: str) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    run_id = None

    def log_params(self, params: dict) -> None:
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path, subdir=None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_dataset(self, name: str, uri: str, digest: str) -> None:
        pass

    def supersede(self, earlier_run_id: str) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


# The experiment's kind, for MLflow UIs that read it to pick the model-training view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI ignores that tag: a per-browser toggle picks the GenAI or the model-training
# view, GenAI until changed (seen in headless Chromium, launch/mlflow_ui_check.py). This query on
# a UI route selects model training (and the browser remembers it).
UI_VIEW = "workflowType=machine_learning"


def ui_route(experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI route (after the server's address) of an experiment or one of its runs, in
    the model-training view where runs are compared on charts."""
    return f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "") + f"?{UI_VIEW}"


def run_ui_route(tracking_uri: str, run_id: str) -> str:
    """ui_route of a run, looked up in its store."""
    import mlflow

    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return ui_route(experiment_id, run_id)


class MLflowTracker:
    """One MLflow run per training run; a resumed run passes its ``run_id`` and continues it.
    ``system_metrics_interval`` > 0 samples CPU, memory, disk, network (and GPU where the NVIDIA
    management library is installed) every that many seconds into the run's system/* metrics."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 artifact_root: str | None = None, system_metrics_interval: float = 10.0):
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        self.uri = uri
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None
            if artifact_root is not None:
                location = Path(artifact_root).resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        exp = mlflow.set_experiment(experiment)
        if EXPERIMENT_KIND[0] not in (exp.tags or {}):
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        system = system_metrics_interval > 0
        if system:
            from mlflow.system_metrics import set_system_metrics_sampling_interval

            set_system_metrics_sampling_interval(system_metrics_interval)
        self.run = (mlflow.start_run(run_id=run_id, log_system_metrics=system) if run_id
                    else mlflow.start_run(run_name=run_name, log_system_metrics=system))
        self.run_id = self.run.info.run_id

    def log_params(self, params: dict) -> None:
        # MLflow caps a param value at 6000 characters and rejects re-logging a changed value.
        existing = self.mlflow.get_run(self.run_id).data.params
        fresh = {k: str(v)[:6000] for k, v in params.items() if k not in existing}
        items = list(fresh.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i:i + 100]))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path, subdir=None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path=subdir)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_dataset(self, name: str, uri: str, digest: str) -> None:
        """The training data as the run's dataset input (the UI's 'Datasets' column)."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        ds = MetaDataset(resolve_dataset_source(uri), name=name, digest=digest[:36])
        self.mlflow.log_input(ds, context="training")

    def supersede(self, earlier_run_id: str) -> None:
        """Mark an earlier run of the same out_dir that never reached a checkpoint (its process
        was killed) as KILLED, tagged with this run's id; a finished one is left as it is."""
        client = self.mlflow.MlflowClient()
        try:
            earlier = client.get_run(earlier_run_id)
        except self.mlflow.exceptions.MlflowException:
            return  # another store, or deleted
        client.set_tag(earlier_run_id, "svgen.superseded_by", self.run_id)
        if earlier.info.status == "RUNNING":
            client.set_terminated(earlier_run_id, status="KILLED")

    def close(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)

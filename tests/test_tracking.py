"""The MLflow tracker's bookkeeping that the UI shows."""

import mlflow

from svgen.tracking import MLflowTracker, ui_route
from svgen.train.provenance import supersede_earlier_run


def test_a_run_killed_before_its_first_checkpoint_is_marked_killed_by_its_successor(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # never read: the argument is the store
    out = tmp_path / "run"
    first = MLflowTracker(uri, "svgen", "x", system_metrics_interval=0)
    supersede_earlier_run(first, out)   # a fresh out_dir: nothing earlier, the run is recorded
    # (a killed process never closes it: it stays RUNNING)
    client = mlflow.MlflowClient(uri)
    client.update_run(first.run_id, status="RUNNING")
    second = MLflowTracker(uri, "svgen", "x", system_metrics_interval=0)
    supersede_earlier_run(second, out)
    second.close()
    old = client.get_run(first.run_id)
    assert old.info.status == "KILLED" and old.data.tags["svgen.superseded_by"] == second.run_id
    assert (out / "tracker_run.txt").read_text().strip() == second.run_id
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_ui_links_open_the_model_training_view():
    assert ui_route("3") == "#/experiments/3?workflowType=machine_learning"
    assert ui_route("3", "ab") == "#/experiments/3/runs/ab?workflowType=machine_learning"

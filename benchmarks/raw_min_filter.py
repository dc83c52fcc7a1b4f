"""The baseline of `runs list --filter "MIN(metrics.KEY) <= X"`: what a user scripts with
MLflow's client today (its search has no MIN, mlflow/mlflow#7790): search every run, read the
metric's history of each, keep the runs whose least non-NaN value is at most X, write their ids.

    python benchmarks/raw_min_filter.py TRACKING_URI EXPERIMENT_NAME KEY X OUT
"""
import math
import sys

from mlflow import MlflowClient

uri, experiment_name, key, bound, out = sys.argv[1:6]
client = MlflowClient(uri)
experiment = client.get_experiment_by_name(experiment_name)
matched, token = [], None
while True:
    page = client.search_runs([experiment.experiment_id], max_results=50000, page_token=token)
    for run in page:
        values = [m.value for m in client.get_metric_history(run.info.run_id, key) if not math.isnan(m.value)]
        if values and min(values) <= float(bound):
            matched.append(run.info.run_id)
    token = page.token
    if not token:
        break
with open(out, "w") as f:
    f.write("\n".join(sorted(matched)) + "\n")

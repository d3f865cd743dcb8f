"""Look at a training run in the MLflow UI as a user would: a real headless Chromium against a real
`mlflow server` on the run's store, with screenshots. Checks what issue 14 found wrong:

1. the experiment opens in the model-training runs view (not the GenAI overview) from the link
   svgen prints (svgen.tracking.ui_route); what a plain link (no query) opens is reported too:
   MLflow 3.17 picks the view from a per-browser toggle, GenAI until the user changes it;
2. the run page lists the training shards under Datasets, with their digest;
3. the run has system metrics (CPU, memory; GPU where it ran on one) and the UI charts them;
4. the sampled mp4 in the run's artifacts plays in the browser (a <video> with a duration);
5. the run page shows its metrics and tags.

    python launch/mlflow_ui_check.py --store sqlite:///runs/demo/mlflow.db --out runs/ui_check
    make ui-check          # the same on the demo's run, after `make demo`

Needs Chromium and its driver (Debian: apt-get install chromium chromium-driver) and the
`browser` extra (selenium). Exits 1 when a check fails, and says which; the screenshots are in --out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svgen.distributed import free_port  # noqa: E402


def start_server(store: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over ``store``; returns once it answers /health."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", store,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow server did not answer on port {port} within 120 s; see {log}")


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) from PATH or the Debian locations, or a clear error."""
    chrome = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"),
                               "/usr/bin/chromium") if p and os.path.exists(p)), None)
    driver = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.path.exists(p)), None)
    if chrome is None or driver is None:
        raise SystemExit("error: needs Chromium and chromedriver (Debian/Ubuntu: apt-get install chromium "
                         "chromium-driver); found " + f"chromium={chrome}, chromedriver={driver}")
    return chrome, driver


class Page:
    def __init__(self, chrome: str, driver_path: str, out: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = chrome
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                     "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
            opts.add_argument(flag)
        self.d = webdriver.Chrome(service=Service(driver_path), options=opts)
        self.out = out

    def open(self, url: str, shot: str, wait_for: str | None = None, timeout: float = 30.0) -> str:
        """Load ``url``, wait until the page's text holds ``wait_for`` (or settles), screenshot;
        returns the visible text."""
        self.d.get(url)
        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            time.sleep(1.0)
            text = self.d.execute_script("return document.body ? document.body.innerText : ''") or ""
            if wait_for is None and len(text) > 200 or wait_for is not None and wait_for in text:
                break
        time.sleep(1.5)  # charts and tables finish drawing
        self.d.save_screenshot(str(self.out / f"{shot}.png"))
        return self.d.execute_script("return document.body.innerText") or ""

    def close(self) -> None:
        self.d.quit()


def check(store: str, experiment: str, run_id: str | None, out: Path) -> list[tuple[str, bool | None, str]]:
    """(what, passed (None: for information only), detail) per check."""
    import mlflow

    mlflow.set_tracking_uri(store)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {store} (run `make demo`, or pass --experiment)")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list", order_by=["attributes.start_time DESC"])
    runs = [r for r in runs if run_id is None or r.info.run_id == run_id]
    if not runs:
        raise SystemExit(f"error: experiment {experiment!r} in {store} has no run{' ' + run_id if run_id else ''}")
    run = runs[0]
    chrome, driver = find_browser()
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(store, port, out / "mlflow_server.log")
    from svgen.tracking import UI_VIEW, ui_route

    host = f"http://127.0.0.1:{port}/"
    base = f"{host}#/experiments/{exp.experiment_id}"

    def at(suffix: str) -> str:  # a run sub-page, in the model-training view
        return f"{base}/runs/{run.info.run_id}{suffix}?{UI_VIEW}"
    results: list[tuple[str, bool | None, str]] = []
    page = Page(chrome, driver, out)
    try:
        name = run.info.run_name
        genai = ("Evaluation runs", "Judges", "Agent versions")  # the GenAI view's menu
        text = page.open(host + ui_route(exp.experiment_id), "1_experiment", wait_for=name)
        results.append(("experiment opens on its training runs from svgen's link (not the GenAI view)",
                        name in text and not any(g in text for g in genai),
                        f"run {name!r} listed: {name in text}; GenAI menu entries: {[g for g in genai if g in text]}"))
        text = page.open(base, "1b_experiment_plain_link", wait_for=name)
        results.append(("(for information) a plain experiment link, without svgen's query, shows the runs",
                        None if not (name in text and not any(g in text for g in genai)) else True,
                        f"run {name!r} listed: {name in text}; GenAI menu entries: {[g for g in genai if g in text]}"))

        text = page.open(host + ui_route(exp.experiment_id, run.info.run_id), "2_run", wait_for="Datasets")
        inputs = run.inputs.dataset_inputs if run.inputs else []
        digests = [d.dataset.digest for d in inputs]
        shown = [d for d in digests if d[:8] in text]
        results.append(("run page lists the training data under Datasets, with its digest",
                        bool(inputs) and "Datasets" in text and "None" not in _after(text, "Datasets", 40) and bool(shown),
                        f"{len(inputs)} dataset input(s) {[d.dataset.name for d in inputs]}, digest shown: {bool(shown)}"))
        metric_keys = sorted(k for k in run.data.metrics if not k.startswith("system/"))
        results.append(("run page shows its metrics and tags",
                        bool(metric_keys) and any(k in text for k in metric_keys[:10]),
                        f"{len(metric_keys)} metrics, e.g. {metric_keys[:4]}"))

        system = sorted(k for k in run.data.metrics if k.startswith("system/"))
        text = page.open(at("/system-metrics"), "3_system_metrics", wait_for="cpu")
        results.append(("system metrics logged and charted (CPU, memory; GPU on a GPU run)",
                        any("cpu" in k for k in system) and any("memory" in k for k in system)
                        and ("cpu_utilization" in text or "cpu" in text.lower()),
                        f"{len(system)} system metrics: {system[:6]}"))

        client = mlflow.MlflowClient()
        mp4s = [a.path for folder in ("samples", "") for a in client.list_artifacts(run.info.run_id, folder or None)
                if a.path.endswith(".mp4")]
        if not mp4s:
            results.append(("a sampled mp4 plays in the artifact view", False, "no .mp4 among the run's artifacts"))
        else:
            page.open(at(f"/artifacts/{mp4s[0]}"), "4_artifact_mp4", wait_for=Path(mp4s[0]).name)
            deadline, state = time.time() + 20, None
            while time.time() < deadline:
                state = page.d.execute_script(
                    "const v = document.querySelector('video');"
                    "return v ? {ready: v.readyState, duration: v.duration, error: v.error && v.error.code} : null")
                if state and state.get("ready", 0) >= 1:
                    break
                time.sleep(1.0)
            page.d.save_screenshot(str(out / "4_artifact_mp4.png"))
            ok = bool(state) and state.get("ready", 0) >= 1 and (state.get("duration") or 0) > 0 and not state.get("error")
            results.append(("a sampled mp4 plays in the artifact view", ok, f"{mp4s[0]}: <video> {state}"))
    finally:
        page.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
    return results


def _after(text: str, word: str, n: int) -> str:
    i = text.find(word)
    return text[i + len(word): i + len(word) + n] if i >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="sqlite:///runs/demo/mlflow.db", help="MLflow backend store (default: %(default)s)")
    ap.add_argument("--experiment", default="svgen", help="experiment name (default: %(default)s)")
    ap.add_argument("--run", help="run id (default: the experiment's latest run)")
    ap.add_argument("--out", default="runs/ui_check", help="screenshots and the server log (default: %(default)s)")
    args = ap.parse_args(argv)
    results = check(args.store, args.experiment, args.run, Path(args.out))
    for what, ok, detail in results:
        print(f"{'NOTE' if ok is None else 'PASS' if ok else 'FAIL'}  {what}\n      {detail}")
    print(f"screenshots: {args.out}")
    return 0 if all(ok is not False for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What per-model metrics and request capture cost a request (issue 13: "a failing or slow sink never slows a request").

One demo model through ``mme serve`` (plain HTTP, shared mode), four ways, one after the other in one run:

- ``off``: no metrics, no capture (``MME_METRICS_ENABLED=false``), the baseline;
- ``metrics``: per-model EMF metrics (the default);
- ``metrics_capture_folder``: metrics, and every request captured to a folder;
- ``metrics_capture_failing_s3``: metrics, and every request captured to an S3 endpoint nobody answers on (every
  write fails after its retries; the records are counted and logged as lost).

Each: p50/p99 at concurrency 1 and requests per second at concurrency 8 (bench/latency.py's measures), and the
ratio to ``off``. Run-to-run noise on a 2-core machine is larger than what is measured, so the configurations are
measured in ``--rounds`` interleaved rounds and each figure is the median of its rounds. Writes
``bench/results/telemetry.{json,md}``. Run with ``make bench-telemetry``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import requests
from latency import BODY, RESULTS, _checked, measure

from mme.container import free_port
from mme.serve_process import ServeProcess

#: ``mme serve`` options of each configuration; ``{capture}`` is a folder of the run.
CONFIGURATIONS: dict[str, list[str]] = {
    "off": ["--container-env", "MME_METRICS_ENABLED=false"],
    "metrics": [],
    "metrics_capture_folder": ["--capture", "{capture}"],
    "metrics_capture_failing_s3": [
        "--capture", "s3://nobody-answers/capture/",
        "--container-env", "AWS_ENDPOINT_URL_S3=http://127.0.0.1:{closed_port}",
        "--container-env", "MME_CAPTURE_WRITE_ATTEMPTS=2",
        "--container-env", "MME_CAPTURE_BATCH_SECONDS=1",
    ],
}  # fmt: skip
#: The S3 client of a capturing container needs credentials, even for an endpoint that never answers.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def measure_configuration(name: str, options: list[str], work: Path, args: argparse.Namespace) -> dict[str, float]:
    capture = work / f"capture-{name}"
    filled = [option.format(capture=capture, closed_port=free_port()) for option in options]
    with ServeProcess(
        args.models, tmp_dir=work / name, cache_dir=work / "cache", options=filled, environment=DUMMY_CREDENTIALS
    ) as endpoint:
        sessions = threading.local()
        url = f"{endpoint.url}/endpoints/local/invocations"
        headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": f"{args.model}.tar.gz"}

        def call() -> None:
            if not hasattr(sessions, "session"):
                sessions.session = requests.Session()
            answer = sessions.session.post(url, data=BODY, headers=headers, timeout=60)
            _checked(answer.status_code, answer.content)

        figures = measure(call, args)
    if "{capture}" in options:
        figures["records_captured"] = sum(len(path.read_text().splitlines()) for path in capture.rglob("*.jsonl"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("build/demo-models"))
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "model": args.model,
        "requests_per_measure": args.requests,
        "rounds": args.rounds,
    }
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGURATIONS}
    with tempfile.TemporaryDirectory(prefix="mme-bench-telemetry-") as work_name:
        for round_number in range(args.rounds):
            for name, options in CONFIGURATIONS.items():
                work = Path(work_name) / f"round-{round_number}"
                rounds[name].append(measure_configuration(name, options, work, args))
                print(round_number, name, rounds[name][-1], flush=True)
    for name, measured in rounds.items():
        results[name] = {key: statistics.median(figures[key] for figures in measured) for key in measured[0]}
        results[f"{name}_rounds"] = measured
    baseline = results["off"]
    assert isinstance(baseline, dict)
    rows = []
    for name in CONFIGURATIONS:
        figures = results[name]
        assert isinstance(figures, dict)
        figures["p50_ratio_to_off"] = round(figures["p50_ms"] / baseline["p50_ms"], 3)
        figures["throughput_ratio_to_off"] = round(figures["throughput_rps_c8"] / baseline["throughput_rps_c8"], 3)
        rows.append(
            f"| {name} | {figures['p50_ms']} | {figures['p99_ms']} | {figures['throughput_rps_c8']} | "
            f"{figures['p50_ratio_to_off']} | {figures['throughput_ratio_to_off']} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "telemetry.json").write_text(json.dumps(results, indent=2) + "\n")
    table = "\n".join(
        ["| configuration | p50 ms (c=1) | p99 ms (c=1) | requests/s (c=8) | p50 / off | throughput / off |",
         "| --- | --- | --- | --- | --- | --- |", *rows]
    )  # fmt: skip
    captured = results["metrics_capture_folder"]
    assert isinstance(captured, dict)
    (RESULTS / "telemetry.md").write_text(
        f"# What metrics and capture cost a request, demo model {args.model!r} ({results['when']})\n\n"
        f"{results['machine']}; `mme serve` over plain HTTP, shared mode; {args.requests} requests per figure; "
        f"each figure the median of {args.rounds} interleaved rounds.\n\n"
        f"{table}\n\n"
        f"Records captured to the folder per round: {captured.get('records_captured')} (every request). With the "
        "failing S3 endpoint every write failed and its records were logged as lost; no request waited for it.\n"
    )
    print(table)


if __name__ == "__main__":
    main()

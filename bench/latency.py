"""Latency and throughput of one demo model along each path a request can take.

- ``in_process``: the floor, tokenize + ``serving_default`` in this process (the handler's model code);
- ``mms_direct``: through the container's MMS (``POST /models/{name}/invoke``);
- ``mme_serve_boto3``: through ``mme serve`` with boto3's ``invoke_endpoint`` (what a user's code does);
- ``mme_serve_http``: through ``mme serve`` with a plain HTTP client.

Each path: p50/p99 at concurrency 1, and requests per second at concurrency 8. Writes
``bench/results/latency.json`` and ``bench/results/latency.md``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests

from handler.model import load_model_dir
from handler.settings import ServingSettings
from mme.archive import extract_archive
from mme.container import LocalContainer
from mme.serve_process import ServeProcess

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "the service was slow but the food was wonderful and I loved the dessert"
BODY = json.dumps({"input_text": TEXT})


def latency(call: Callable[[], object], *, requests_count: int, warmup: int) -> dict[str, float]:
    """p50/p99/mean in milliseconds over sequential calls (concurrency 1)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests_count):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def throughput(call: Callable[[], object], *, requests_count: int, concurrency: int) -> float:
    """Requests per second with ``concurrency`` callers sharing ``requests_count`` calls."""
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: call(), range(concurrency * 4)))  # warm every connection
        start = time.perf_counter()
        list(pool.map(lambda _: call(), range(requests_count)))
        return round(requests_count / (time.perf_counter() - start), 1)


def measure(call: Callable[[], object], args: argparse.Namespace) -> dict[str, float]:
    figures = latency(call, requests_count=args.requests, warmup=args.warmup)
    figures["throughput_rps_c8"] = throughput(call, requests_count=args.requests, concurrency=8)
    return figures


def _checked(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"the benchmark request failed with {status}: {body[:200]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("build/demo-models"))
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=40)
    args = parser.parse_args()
    archive = args.models / f"{args.model}.tar.gz"

    results: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "model": args.model,
        "text": TEXT,
        "requests_per_measure": args.requests,
    }
    with tempfile.TemporaryDirectory(prefix="mme-bench-") as work_name:
        work = Path(work_name)
        model_dir = extract_archive(archive, work / args.model)

        classifier = load_model_dir(model_dir, ServingSettings())
        results["in_process"] = measure(lambda: classifier.predict([TEXT]), args)

        # MMS refuses to start while another MMS runs on the host: one server at a time.
        with LocalContainer(work / "run") as container:
            started = time.perf_counter()
            loaded = container.client.load(args.model, model_dir)
            _checked(loaded.status, loaded.body)
            results["mms_cold_load_s"] = round(time.perf_counter() - started, 2)

            def through_mms() -> None:
                answer = container.client.invoke(args.model, BODY)
                _checked(answer.status, answer.body)

            results["mms_direct"] = measure(through_mms, args)

        with ServeProcess(args.models, tmp_dir=work / "serve", cache_dir=work / "cache") as endpoint:
            client = endpoint.client(retries=3)
            key = archive.name

            def through_boto3() -> None:
                answer = client.invoke_endpoint(
                    EndpointName="local", TargetModel=key, ContentType="application/json", Body=BODY
                )
                answer["Body"].read()

            results["mme_serve_boto3"] = measure(through_boto3, args)
            sessions = threading.local()
            url = f"{endpoint.url}/endpoints/local/invocations"
            headers = {"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": key}

            def through_http() -> None:
                if not hasattr(sessions, "session"):
                    sessions.session = requests.Session()
                answer = sessions.session.post(url, data=BODY, headers=headers, timeout=60)
                _checked(answer.status_code, answer.content)

            results["mme_serve_http"] = measure(through_http, args)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        f"| {name} | {f['p50_ms']} | {f['p99_ms']} | {f['mean_ms']} | {f['throughput_rps_c8']} |"
        for name, f in results.items()
        if isinstance(f, dict)
    ]
    table = "\n".join(
        ["| path | p50 ms (c=1) | p99 ms (c=1) | mean ms (c=1) | requests/s (c=8) |", "| --- | --- | --- | --- | --- |",
         *rows]
    )  # fmt: skip
    (RESULTS / "latency.md").write_text(
        f"# Latency and throughput, demo model {results['model']!r} ({results['when']})\n\n"
        f"{results['machine']}; {args.requests} requests per figure; one text per request.\n\n{table}\n\n"
        f"Cold load through MMS: {results['mms_cold_load_s']} s\n"
    )
    print(table)
    print(f"cold load through MMS: {results['mms_cold_load_s']} s; written to {RESULTS}")


if __name__ == "__main__":
    main()

"""Latency of one demo model: the in-process floor (tokenize + signature) against the same model through MMS.

Writes ``bench/results/latency.json`` and ``bench/results/latency.md``. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from handler.model import load_model_dir
from handler.settings import ServingSettings
from mme.archive import extract_archive
from mme.container import LocalContainer

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "the service was slow but the food was wonderful and I loved the dessert"


def measure(call: Callable[[], object], *, requests: int, warmup: int) -> dict[str, float]:
    """p50/p99/mean in milliseconds over ``requests`` sequential calls (concurrency 1)."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "requests": requests,
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("build/demo-models"))
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    results: dict[str, object] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
        "model": args.model,
        "text": TEXT,
        "concurrency": 1,
    }
    with tempfile.TemporaryDirectory(prefix="mme-bench-") as work_name:
        work = Path(work_name)
        model_dir = extract_archive(args.models / f"{args.model}.tar.gz", work / args.model)

        classifier = load_model_dir(model_dir, ServingSettings())
        results["in_process"] = measure(lambda: classifier.predict([TEXT]), requests=args.requests, warmup=args.warmup)

        with LocalContainer(work / "run") as container:
            started = time.perf_counter()
            assert container.client.load(args.model, model_dir).status == 200
            results["mms_cold_load_s"] = round(time.perf_counter() - started, 2)
            body = json.dumps({"input_text": TEXT})

            def through_mms() -> None:
                answer = container.client.invoke(args.model, body)
                assert answer.status == 200, answer.body

            results["mms_direct"] = measure(through_mms, requests=args.requests, warmup=args.warmup)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        f"| {name} | {figures['p50_ms']} | {figures['p99_ms']} | {figures['mean_ms']} |"
        for name, figures in results.items()
        if isinstance(figures, dict)
    ]
    table = "\n".join(["| path | p50 ms | p99 ms | mean ms |", "| --- | --- | --- | --- |", *rows])
    (RESULTS / "latency.md").write_text(
        f"# Latency, {results['model']}, concurrency 1 ({results['when']})\n\n{results['machine']}\n\n{table}\n\n"
        f"Cold load through MMS: {results['mms_cold_load_s']} s\n"
    )
    print(table)
    print(f"cold load through MMS: {results['mms_cold_load_s']} s; written to {RESULTS}")


if __name__ == "__main__":
    main()

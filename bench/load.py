"""Bounded load and soak on a local ``mme serve``: many requests at a fixed concurrency over three models.

``mme serve`` runs with the container's software as host processes (:class:`~mme.serve_process.ServeProcess`) over
a store of three keys: the demo ``sentiment.tar.gz`` and ``topic.tar.gz``, and ``sentiment-copy.tar.gz`` (the
sentiment archive again, so two of the three models share a graph but load as separate workers). ``concurrency``
clients, each on its own keep-alive connection, send ``{"input_text": ...}`` to ``POST
/endpoints/local/invocations``; request ``i`` of a run gets a text of 8-30 words and a model drawn from a generator
seeded with ``(seed, i)``, so a run sends the same requests whatever the interleaving.

An answer counts as an error unless it is a 200 whose body is a prediction of that model (its label among the
model's labels, a score for each). After a warm-up of the same traffic (not counted), the run records: requests,
errors by status with sample bodies, p50/p99/max latency, throughput, and the memory of the serving tree (``mme
serve``, the container's entrypoint, MMS's Java front end and its workers): RSS and PSS summed, sampled every few
seconds. Memory growth is the mean over the last minute of the measured phase against its first sample.

As a script: ``python bench/load.py --models build/demo-models`` (20,000 requests; ``make bench-load``) writes
``bench/results/load.{json,md}``; with ``--duration-seconds 600`` it runs for that long instead and writes
``soak.{json,md}``. ``tests/reliability/test_load.py`` imports :func:`run_load` and asserts on its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from mme.container import processes_under
from mme.serve_process import ServeProcess

RESULTS = Path(__file__).resolve().parent / "results"
ENDPOINT_NAME = "local"
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
#: Store key -> the demo archive it is a copy of.
STORE_KEYS = {"sentiment.tar.gz": "sentiment", "topic.tar.gz": "topic", "sentiment-copy.tar.gz": "sentiment"}
#: Tunables of the container that change how many threads serve (handler/settings.py, MMS), reported with results.
THREAD_SETTINGS = (
    "SAGEMAKER_MODEL_SERVER_WORKERS",
    "MME_TF_INTRA_OP_THREADS",
    "MME_TF_INTER_OP_THREADS",
    "OMP_NUM_THREADS",
)
#: Words from both demo domains and some neither model saw, so texts hit known and unknown tokens alike.
WORDS = (
    "the", "a", "movie", "film", "show", "food", "dinner", "flight", "hotel", "match", "game", "team", "phone",
    "laptop", "software", "update", "trip", "beach", "museum", "pasta", "pizza", "recipe", "goal", "season",
    "loved", "hated", "enjoyed", "wonderful", "terrible", "boring", "great", "awful", "brilliant", "slow", "cheap",
    "expensive", "fast", "and", "but", "was", "is", "really", "very", "not", "we", "i", "they", "last", "night",
    "weekend", "server", "battery", "coach", "striker", "airport", "train", "luggage", "chef", "dessert", "quietly",
    "zebra", "quantum", "marmalade", "thermostat", "origami", "kayak",
)  # fmt: skip
MIN_WORDS, MAX_WORDS = 8, 30
#: The window at the end of the measured phase whose mean memory is compared with its first sample.
GROWTH_WINDOW_SECONDS = 60.0
GROWTH_DEFINITION = (
    "growth = mean of the samples in the last 60 s of the measured phase / the first sample of the measured phase "
    "(taken after the warm-up) - 1; each sample sums RSS (psutil memory_info().rss) and PSS (memory_full_info().pss) "
    "over the serving tree: mme serve, its descendants and every process whose command line names its run folder "
    "(MMS's Java front end and its workers)"
)
_MIB = 1024 * 1024


def archive_labels(archive: Path) -> tuple[str, ...]:
    """The labels listed in an archive's ``mme.json``.

    Raises:
        ValueError: the archive has no ``mme.json`` with ``labels``; the load generator could not check answers.
    """
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "mme.json"), None)
        stream = tar.extractfile(member) if member is not None else None
        labels = json.load(stream).get("labels") if stream is not None else None
    if not labels:
        raise ValueError(f"{archive} has no mme.json with labels")
    return tuple(labels)


def build_store(archives: Mapping[str, Path], root: Path) -> dict[str, tuple[str, ...]]:
    """Copy the demo archives (``{"sentiment": path, "topic": path}``) into ``root`` under :data:`STORE_KEYS`.

    Returns each store key's labels.
    """
    root.mkdir(parents=True, exist_ok=True)
    models = {}
    for key, name in STORE_KEYS.items():
        shutil.copy2(archives[name], root / key)
        models[key] = archive_labels(root / key)
    return models


def request_of(seed: int, index: int, keys: Sequence[str]) -> tuple[str, str]:
    """Request ``index`` of a run seeded with ``seed``: (store key, text of 8-30 words)."""
    # A generator per request keeps each request the same however the concurrent clients interleave.
    rng = random.Random(f"{seed}:{index}")
    text = " ".join(rng.choices(WORDS, k=rng.randint(MIN_WORDS, MAX_WORDS)))
    return rng.choice(keys), text


def process_role(cmdline: str) -> str:
    """What a serving process is, from its command line: workers, frontend, model_host, entrypoint, mme_serve or
    other."""
    if "model_service_worker" in cmdline:
        return "workers"
    if "handler.host" in cmdline:
        return "model_host"
    if "com.amazonaws.ml.mms" in cmdline:
        return "frontend"
    if "handler.serve" in cmdline:
        return "entrypoint"
    if "mme.cli" in cmdline and " serve" in cmdline:
        return "mme_serve"
    return "other"


def serving_tree(endpoint: ServeProcess) -> list[psutil.Process]:
    """``mme serve``, its descendants, and the processes whose command line names its run folder.

    The run folder catches MMS's Java front end, which MMS's launcher leaves re-parented to init.
    """
    if endpoint.process is None:
        raise RuntimeError("the endpoint is not started")
    found = {endpoint.process.pid: psutil.Process(endpoint.process.pid)}
    for process in [*found[endpoint.process.pid].children(recursive=True), *processes_under(endpoint.tmp_dir)]:
        found.setdefault(process.pid, process)
    return list(found.values())


@dataclass(frozen=True)
class MemorySample:
    """The serving tree's memory at ``seconds`` into the measured phase, in bytes, in total and per role."""

    seconds: float
    rss: int
    pss: int
    processes: int
    rss_by_role: dict[str, int]
    pss_by_role: dict[str, int]


def memory_sample(endpoint: ServeProcess, seconds: float) -> MemorySample:
    """One reading of the serving tree's RSS and PSS (a process that exits meanwhile is left out)."""
    rss: Counter[str] = Counter()
    pss: Counter[str] = Counter()
    count = 0
    for process in serving_tree(endpoint):
        try:
            role = process_role(" ".join(process.cmdline()))
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        rss[role] += info.rss
        pss[role] += info.pss
        count += 1
    return MemorySample(
        seconds=round(seconds, 1),
        rss=sum(rss.values()),
        pss=sum(pss.values()),
        processes=count,
        rss_by_role=dict(rss),
        pss_by_role=dict(pss),
    )


class MemorySampler:
    """Samples the serving tree every ``interval`` seconds on a thread of its own, from :meth:`start` to
    :meth:`stop`; the first sample is taken in :meth:`start`."""

    def __init__(self, endpoint: ServeProcess, interval: float) -> None:
        self.endpoint = endpoint
        self.interval = interval
        self.samples: list[MemorySample] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self.samples.append(memory_sample(self.endpoint, 0.0))
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.samples.append(memory_sample(self.endpoint, time.monotonic() - self._started))

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        self.samples.append(memory_sample(self.endpoint, time.monotonic() - self._started))


def memory_growth(samples: Sequence[MemorySample], window_seconds: float = GROWTH_WINDOW_SECONDS) -> dict[str, Any]:
    """RSS and PSS at the first sample and averaged over the last ``window_seconds``, and the growth between
    (:data:`GROWTH_DEFINITION`), in total and per role."""
    first, end = samples[0], samples[-1].seconds
    window = [s for s in samples if s.seconds >= end - window_seconds]

    def mean(values: Sequence[int]) -> float:
        return float(np.mean(values))

    growth: dict[str, Any] = {"definition": GROWTH_DEFINITION, "window_samples": len(window)}
    for kind in ("rss", "pss"):
        last = mean([getattr(s, kind) for s in window])
        start = getattr(first, kind)
        roles = getattr(first, f"{kind}_by_role")
        # Workers start with their models: without a warm-up the first sample has none.
        names = set(roles).union(*(getattr(s, f"{kind}_by_role") for s in window))
        growth[kind] = {
            "first_bytes": start,
            "last_minute_mean_bytes": round(last),
            "growth": round(last / start - 1, 4),
            "by_role": {
                role: {
                    "first_bytes": roles.get(role, 0),
                    "last_minute_mean_bytes": round(mean([getattr(s, f"{kind}_by_role").get(role, 0) for s in window])),
                }
                for role in sorted(names)
            },
        }
    return growth


@dataclass
class Tally:
    """What one phase of a run saw."""

    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    per_model: Counter[str] = field(default_factory=Counter)
    errors_by_status: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_status.values())

    def error(self, status: str, detail: str) -> None:
        self.errors_by_status[status] += 1
        samples = self.error_samples.setdefault(status, [])
        if len(samples) < 5:
            samples.append(detail[:500])


def prediction_problem(body: bytes, labels: Sequence[str]) -> str | None:
    """Why ``body`` is not one prediction of a model with ``labels`` (None when it is)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(answer, dict) or answer.get("label") not in labels:
        return f"the label is not one of {list(labels)}"
    if not isinstance(answer.get("scores"), dict) or set(answer["scores"]) != set(labels):
        return f"the scores are not one per label of {list(labels)}"
    return None


async def _drive(
    url: str,
    models: Mapping[str, tuple[str, ...]],
    *,
    seed: int,
    first_index: int,
    requests: int | None,
    deadline: float | None,
    concurrency: int,
    tally: Tally,
) -> int:
    """Send requests ``first_index``, ``first_index + 1``, ... from ``concurrency`` clients until ``requests`` are
    sent or ``deadline`` (monotonic) passes; return the next unsent index."""
    keys = sorted(models)
    next_index = first_index
    last_index = None if requests is None else first_index + requests
    timeout = aiohttp.ClientTimeout(total=60)
    # One pooled connection per client, kept alive between its requests.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while True:
            if (last_index is not None and next_index >= last_index) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                return
            index, next_index = next_index, next_index + 1
            key, text = request_of(seed, index, keys)
            headers = {TARGET_MODEL: key, "Content-Type": "application/json"}
            started = time.perf_counter()
            try:
                async with session.post(url, data=json.dumps({"input_text": text}), headers=headers) as response:
                    body = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                tally.requests += 1
                tally.per_model[key] += 1
                tally.error(f"exception {type(error).__name__}", f"{key}: {error!r}")
                continue
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.requests += 1
            tally.per_model[key] += 1
            if status != 200:
                tally.error(str(status), f"{key}: {body.decode(errors='replace')}")
            elif (problem := prediction_problem(body, models[key])) is not None:
                tally.error("200 not a prediction", f"{key}: {problem}: {body.decode(errors='replace')}")

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return next_index


def run_load(
    endpoint: ServeProcess,
    models: Mapping[str, tuple[str, ...]],
    *,
    requests: int | None = None,
    duration_seconds: float | None = None,
    concurrency: int = 16,
    seed: int = 0,
    warmup_seconds: float = 0.0,
    memory_interval_seconds: float = 5.0,
) -> dict[str, Any]:
    """Drive a started ``endpoint`` serving ``models`` (store key -> labels) and return the report.

    Sends ``requests`` requests, or sends for ``duration_seconds`` (exactly one of them), after a warm-up of
    ``warmup_seconds`` of the same traffic whose answers count only in ``report["warmup"]``.
    """
    if (requests is None) == (duration_seconds is None):
        raise ValueError("give exactly one of requests and duration_seconds")
    url = f"{endpoint.url}/endpoints/{ENDPOINT_NAME}/invocations"
    warmup = Tally()
    next_index = 0
    if warmup_seconds > 0:
        next_index = asyncio.run(
            _drive(url, models, seed=seed, first_index=0, requests=None, deadline=time.monotonic() + warmup_seconds,
                   concurrency=concurrency, tally=warmup)
        )  # fmt: skip
    measured = Tally()
    sampler = MemorySampler(endpoint, memory_interval_seconds)
    sampler.start()
    started = time.monotonic()
    deadline = None if duration_seconds is None else started + duration_seconds
    asyncio.run(
        _drive(url, models, seed=seed, first_index=next_index, requests=requests, deadline=deadline,
               concurrency=concurrency, tally=measured)
    )  # fmt: skip
    elapsed = time.monotonic() - started
    sampler.stop()

    latencies = np.asarray(measured.latencies_ms)
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (float("nan"), float("nan"))
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "host (mme serve with the container's software as host processes)",
        "settings": {
            "concurrency": concurrency,
            "requests_asked": requests,
            "duration_seconds_asked": duration_seconds,
            "warmup_seconds": warmup_seconds,
            "seed": seed,
            "words_per_text": [MIN_WORDS, MAX_WORDS],
            "models": {key: list(labels) for key, labels in sorted(models.items())},
            "memory_interval_seconds": memory_interval_seconds,
        },
        "requests": measured.requests,
        "errors": measured.errors,
        "errors_by_status": dict(measured.errors_by_status),
        "error_samples": measured.error_samples,
        "per_model": dict(sorted(measured.per_model.items())),
        "duration_s": round(elapsed, 2),
        "throughput_rps": round(measured.requests / elapsed, 1),
        "latency_ms": {
            "p50": round(float(p50), 2),
            "p99": round(float(p99), 2),
            "max": round(float(latencies.max()), 2) if latencies.size else None,
            "mean": round(float(latencies.mean()), 2) if latencies.size else None,
            "definition": "from sending the request to reading the whole answer, on the client; answers only",
        },
        "warmup": {
            "requests": warmup.requests,
            "errors": warmup.errors,
            "errors_by_status": dict(warmup.errors_by_status),
            "error_samples": warmup.error_samples,
            "per_model": dict(sorted(warmup.per_model.items())),
        },
        "memory": memory_growth(sampler.samples),
        "memory_samples": [asdict(sample) for sample in sampler.samples],
    }


def _package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a result was measured on, and the thread settings the serving processes inherit."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _package_version("tensorflow-cpu", "tensorflow"),
        "thread_settings": {name: os.environ.get(name, "unset (default)") for name in THREAD_SETTINGS},
    }


def machine_line(report: Mapping[str, Any]) -> str:
    m = report["machine"]
    threads = ", ".join(f"{name}={value}" for name, value in m["thread_settings"].items())
    return (
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), {m['memory_total_bytes'] / 1024**3:.1f} GiB, {m['platform']}, "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}; mode: {report['mode']}; {threads}"
    )


def markdown(report: Mapping[str, Any], title: str) -> str:
    """The report as a short Markdown page."""
    latency, memory, settings = report["latency_ms"], report["memory"], report["settings"]
    rss, pss = memory["rss"], memory["pss"]
    errors = ", ".join(f"{status}: {count}" for status, count in report["errors_by_status"].items()) or "none"
    roles = [
        f"| {role} | {rss['by_role'][role]['first_bytes'] / _MIB:.0f} | "
        f"{rss['by_role'][role]['last_minute_mean_bytes'] / _MIB:.0f} | "
        f"{pss['by_role'][role]['first_bytes'] / _MIB:.0f} | "
        f"{pss['by_role'][role]['last_minute_mean_bytes'] / _MIB:.0f} |"
        for role in rss["by_role"]
    ]
    return "\n".join(
        [
            f"# {title} ({report['when']})",
            "",
            machine_line(report) + ".",
            "",
            f"Concurrency {settings['concurrency']} over {', '.join(settings['models'])}; texts of "
            f"{settings['words_per_text'][0]}-{settings['words_per_text'][1]} words, seed {settings['seed']}; after a "
            f"{settings['warmup_seconds']:g} s warm-up of the same traffic ({report['warmup']['requests']} requests, "
            f"{report['warmup']['errors']} errors). An error is any answer but a 200 carrying a prediction of the "
            "model asked.",
            "",
            "| requests | errors | p50 ms | p99 ms | max ms | requests/s | duration s | RSS growth | PSS growth |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {report['requests']} | {report['errors']} | {latency['p50']} | {latency['p99']} | {latency['max']} | "
            f"{report['throughput_rps']} | {report['duration_s']} | {rss['growth']:+.2%} | {pss['growth']:+.2%} |",
            "",
            f"Errors by status: {errors}. Requests per model: "
            + ", ".join(f"{key} {count}" for key, count in report["per_model"].items())
            + ".",
            "",
            f"Memory of the serving tree, MiB ({memory['definition']}):",
            "",
            "| process | RSS first | RSS last-minute mean | PSS first | PSS last-minute mean |",
            "| --- | ---: | ---: | ---: | ---: |",
            *roles,
            f"| **total** | {rss['first_bytes'] / _MIB:.0f} | {rss['last_minute_mean_bytes'] / _MIB:.0f} | "
            f"{pss['first_bytes'] / _MIB:.0f} | {pss['last_minute_mean_bytes'] / _MIB:.0f} |",
            "",
            "Latency is measured on the client from sending a request to reading its whole answer; the load generator "
            "shares the machine's CPUs with the server.",
            "",
        ]
    )


def write_results(report: Mapping[str, Any], name: str, title: str, folder: Path = RESULTS) -> Path:
    """Write ``{name}.json`` and ``{name}.md`` into ``folder``; return the JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown(report, title))
    return folder / f"{name}.json"


def summary(report: Mapping[str, Any]) -> str:
    """One line: requests, errors, latency, throughput and memory growth."""
    latency, memory = report["latency_ms"], report["memory"]
    return (
        f"{report['requests']} requests, {report['errors']} errors {report['errors_by_status']}, "
        f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms, "
        f"{report['throughput_rps']} requests/s; RSS growth {memory['rss']['growth']:+.2%}, "
        f"PSS growth {memory['pss']['growth']:+.2%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("build/demo-models"), help="holds the demo archives")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--duration-seconds", type=float, help="send for this long instead (a soak: soak.{json,md})")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup-seconds", type=float, help="default: 60 for a soak, 10 otherwise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-interval-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    archives = {name: args.models / f"{name}.tar.gz" for name in set(STORE_KEYS.values())}
    missing = [str(path) for path in archives.values() if not path.is_file()]
    if missing:
        parser.error(f"missing {missing}: run `.venv/bin/mme demo-models --out {args.models}`")
    soak = args.duration_seconds is not None
    warmup = args.warmup_seconds if args.warmup_seconds is not None else (60.0 if soak else 10.0)

    with tempfile.TemporaryDirectory(prefix="mme-load-") as work_name:
        work = Path(work_name)
        models = build_store(archives, work / "store")
        with ServeProcess(work / "store", tmp_dir=work / "serve", cache_dir=work / "serve" / "cache") as endpoint:
            report = run_load(
                endpoint,
                models,
                requests=None if soak else args.requests,
                duration_seconds=args.duration_seconds,
                concurrency=args.concurrency,
                seed=args.seed,
                warmup_seconds=warmup,
                memory_interval_seconds=args.memory_interval_seconds,
            )
    name, title = ("soak", "Soak") if soak else ("load", "Bounded load")
    written = write_results(report, name, f"{title} on a local mme serve", args.out)
    print(summary(report))
    print(f"written to {written} and {written.with_suffix('.md')}")


if __name__ == "__main__":
    main()

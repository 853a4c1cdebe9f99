"""How much memory each loaded model costs the container, as the kernel charges it: the figure `mme cost` sizes
instances with.

The container's own software (``python -m handler.serve`` through :class:`~mme.container.LocalContainer`: the
entrypoint, MMS's Java front end, one Python worker per model) runs on this host. Copies of the demo archives,
extracted under different names, are loaded one after another; after the first 1, 2, 4 and 8 models (each loaded
and invoked once, so its graph is built as a served model's is), the proportional set size (PSS) of every process
of the container is summed. PSS shares each page among the processes that map it, so TensorFlow's libraries, mapped
by every worker, count once, as they do in the container's cgroup. The same sum before any load is the base.

The per-model increment is the least-squares slope of the sum over the loaded points; its intercept is the base
plus what the first model brings that later ones share. At each count the warm p50 of a request to the loaded models
(in turn) is measured too. Writes ``bench/results/density.json``, ``density.md`` and ``density.png`` (memory and p50
against model count). Run with ``make bench-density``; ``--counts 1,5,10,20,50`` gives issue 11's points, and
``--container-env NAME=VALUE`` (repeatable) a model server mode, with ``--name`` for its results' file names. MMS
allows one server per host: nothing else may run MMS meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ is not a package on the path
    sys.path.insert(0, str(ROOT))

from bench.load import process_role  # noqa: E402
from handler.settings import ServingSettings  # noqa: E402
from mme.archive import extract_archive  # noqa: E402
from mme.aws.cost import load_density, load_prices  # noqa: E402
from mme.container import LocalContainer, processes_under  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEXT = "the service was slow but the food was wonderful and I loved the dessert"
BODY = json.dumps({"input_text": TEXT})
COUNTS = (1, 2, 4, 8)
#: Requests per count for the warm p50, spread over the loaded models in turn.
LATENCY_REQUESTS = 100
_MIB = 1024 * 1024


def container_processes(container: LocalContainer) -> list[psutil.Process]:
    """Every live process of the container: the session its entrypoint started (MMS's Java front end is
    re-parented to init, but stays in that session), found from the MMS processes under its run folder."""
    under = processes_under(container.run_dir)
    if not under:
        raise RuntimeError(f"no MMS process found under {container.run_dir}")
    session = os.getsid(under[0].pid)
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            continue
    return found


def pss_by_role(container: LocalContainer) -> dict[str, int]:
    """PSS in bytes of the container's processes, summed per role (entrypoint, frontend, workers, model_host,
    other)."""
    totals = {"entrypoint": 0, "frontend": 0, "workers": 0, "model_host": 0, "other": 0}
    for process in container_processes(container):
        try:
            role = process_role(" ".join(process.cmdline()))
            totals[role] = totals.get(role, 0) + process.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return totals


def settled_reading(container: LocalContainer, *, readings: int = 5, pause: float = 1.0) -> dict[str, int]:
    """The reading (per role and total) with the median total over `readings`, `pause` seconds apart."""
    taken = []
    for _ in range(readings):
        time.sleep(pause)
        by_role = pss_by_role(container)
        taken.append({**by_role, "total": sum(by_role.values())})
    taken.sort(key=lambda reading: reading["total"])
    return taken[len(taken) // 2]


def _checked(status: int, body: bytes, what: str) -> None:
    if status != 200:
        raise RuntimeError(f"{what} failed with {status}: {body[:300]!r}")


def warm_p50_ms(container: LocalContainer, names: list[str], requests: int = LATENCY_REQUESTS) -> float:
    """The median latency of `requests` sequential invocations of the loaded models `names`, in turn."""
    samples = []
    for index in range(requests):
        started = time.perf_counter()
        answer = container.client.invoke(names[index % len(names)], BODY)
        samples.append((time.perf_counter() - started) * 1000)
        _checked(answer.status, answer.body, f"invoking {names[index % len(names)]}")
    return round(statistics.median(samples), 3)


def measure(
    archives: list[Path], work: Path, counts: tuple[int, ...], environment: dict[str, str]
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """The base reading and one reading per count in `counts`, loading copies of `archives` in turn."""
    copies = []
    for index in range(max(counts)):
        archive = archives[index % len(archives)]
        name = f"{archive.name.removesuffix('.tar.gz')}-{index}"
        copies.append((name, extract_archive(archive, work / "models" / name)))
    points: list[dict[str, Any]] = []
    with LocalContainer(work / "run", environment=environment) as container:
        base = {"models": 0, **settled_reading(container)}
        print(f"  0 models: {base['total'] / _MIB:.0f} MiB")
        loaded = 0
        for count in counts:
            while loaded < count:
                name, folder = copies[loaded]
                answer = container.client.load(name, folder)
                _checked(answer.status, answer.body, f"loading {name}")
                answer = container.client.invoke(name, BODY)
                _checked(answer.status, answer.body, f"invoking {name}")
                loaded += 1
            point: dict[str, Any] = {"models": count, **settled_reading(container)}
            point["p50_ms"] = warm_p50_ms(container, [name for name, _ in copies[:count]])
            points.append(point)
            print(f"  {count} models: {point['total'] / _MIB:.0f} MiB, warm p50 {point['p50_ms']:.1f} ms")
    return base, points


def saved_model_bytes(archive: Path, work: Path) -> int:
    folder = extract_archive(archive, work / "size" / archive.name)
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("build/demo-models"))
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)), help="model counts to measure, e.g. 1,5,10")
    parser.add_argument("--container-env", action="append", default=[], help="NAME=VALUE for the model server")
    parser.add_argument("--name", default="density", help="results file names (density.json is what mme cost reads)")
    args = parser.parse_args()
    counts = tuple(sorted({int(count) for count in args.counts.split(",")}))
    environment = dict(pair.split("=", 1) for pair in args.container_env)
    archives = sorted(args.models.glob("*.tar.gz"))
    if not archives:
        parser.error(f"no *.tar.gz in {args.models}: run `.venv/bin/mme demo-models --out {args.models}`")
    leftover = [
        p.pid for p in psutil.process_iter(["cmdline"]) if "com.amazonaws.ml.mms" in " ".join(p.info["cmdline"] or [])
    ]
    if leftover:
        parser.error(f"an MMS already runs (pids {leftover}): MMS allows one per host; stop it first")

    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="mme-density-") as work_name:
        work = Path(work_name)
        sizes = {archive.name: saved_model_bytes(archive, work) for archive in archives}
        base, points = measure(archives, work, counts, environment)

    fit = statistics.linear_regression([p["models"] for p in points], [p["total"] for p in points])
    memory = psutil.virtual_memory().total
    results: dict[str, Any] = {
        "when": started.isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "memory_total_bytes": memory,
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "method": (
            "host processes of the container's software (LocalContainer: python -m handler.serve, MMS front end, MMS "
            "workers, one per idle model, and in shared mode the model host), "
            f"MME_MODEL_HOST={ServingSettings.from_env(environment).model_host}; copies of the demo archives loaded "
            f"under different names, each invoked once; after 0, {', '.join(map(str, counts))} models the PSS "
            "(psutil memory_full_info().pss) of every process in the container's session is summed, the median of "
            "5 readings 1 s apart; per_model_bytes and intercept_bytes are the least-squares fit over the loaded "
            "points; base_bytes is the 0-model point; p50_ms is the median of "
            f"{LATENCY_REQUESTS} sequential invocations of the loaded models in turn, straight to MMS"
        ),
        "container_environment": environment,
        "archives": {name: {"unpacked_bytes": size} for name, size in sizes.items()},
        "workers_per_model": 1,
        "base_bytes": base["total"],
        "per_model_bytes": round(fit.slope),
        "intercept_bytes": round(fit.intercept),
        "points": [base, *points],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(results, RESULTS / f"{args.name}.json", f"{args.name}.png"))
    plot(results, RESULTS / f"{args.name}.png")
    print(f"base {base['total'] / _MIB:.0f} MiB, {fit.slope / _MIB:.0f} MiB per model; written to {RESULTS}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Container memory and warm p50 against the number of loaded models."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = [point for point in results["points"] if point["models"] > 0]
    counts = [point["models"] for point in points]
    figure, (memory_axis, latency_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    memory_axis.plot([0, *counts], [results["base_bytes"] / _MIB, *(p["total"] / _MIB for p in points)], marker="o")
    memory_axis.set_xlabel("models loaded")
    memory_axis.set_ylabel("PSS of the container's processes, MiB")
    memory_axis.set_title("memory")
    latency_axis.plot(counts, [point["p50_ms"] for point in points], marker="o", color="#c44e52")
    latency_axis.set_xlabel("models loaded")
    latency_axis.set_ylabel("warm p50, ms")
    latency_axis.set_ylim(bottom=0)
    latency_axis.set_title("latency (models in turn)")
    environment = ", ".join(f"{k}={v}" for k, v in results.get("container_environment", {}).items()) or "defaults"
    figure.suptitle(f"Demo-size models on one container ({environment})")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(results: dict[str, Any], density_file: Path = RESULTS / "density.json", png: str = "density.png") -> str:
    """The results as Markdown: the points, the fit, and what fits on each instance type of the price table."""
    machine, points = results["machine"], results["points"]
    rows = [
        f"| {p['models']} | {p['total'] / _MIB:.0f} | {p['entrypoint'] / _MIB:.0f} | {p['frontend'] / _MIB:.0f} | "
        f"{p['workers'] / _MIB:.0f} | {p.get('model_host', 0) / _MIB:.0f} | {p.get('p50_ms', '-')} |"
        for p in points
    ]
    density = load_density(density_file)
    # What `mme cost` keeps free on each instance for the measured mode (handler/settings.py).
    reserve_mb = ServingSettings.from_env(results.get("container_environment", {})).memory_kept_free_mb
    fits = [
        f"| `{t.name}` | {t.memory_gib:g} GiB | {density.models_per_instance(t, reserve_mb=reserve_mb)} |"
        for t in sorted(load_prices().instance_types.values(), key=lambda t: (t.memory_gib, t.usd_per_hour))
    ]
    return "\n".join(
        [
            f"# Memory per loaded model ({results['when']})",
            "",
            f"{machine['cpu_count']} CPUs, {machine['memory_total_bytes'] / 1024**3:.1f} GiB, "
            f"{machine['platform']}, Python {machine['python']}.",
            "",
            f"Method: {results['method']}.",
            "",
            "| models loaded | PSS total MiB | entrypoint | MMS front end | workers | model host | warm p50 ms |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Base (no model): {results['base_bytes'] / _MIB:.0f} MiB. Per model (least-squares slope over the loaded "
            f"points): {results['per_model_bytes'] / _MIB:.0f} MiB; intercept {results['intercept_bytes'] / _MIB:.0f} "
            "MiB.",
            "",
            f"![memory and latency against model count]({png})",
            "",
            f"Models that stay loaded per instance (`mme cost`: memory - {density.fixed_bytes / _MIB:.0f} MiB fixed "
            f"- {reserve_mb} MiB load reserve, divided by the per-model increment):",
            "",
            "| instance type | memory | models |",
            "| --- | ---: | ---: |",
            *fits,
            "",
        ]
    )


if __name__ == "__main__":
    main()

"""Issue 11's memory figures: the container's memory with 1, 5, 10, 20 and 50 demo-size models loaded in each model
host mode (per-worker / shared, target >= 5 at 20 models), and each mode's per-model increment against the model's
SavedModel size on disk (target for shared mode: increment <= 2 x size + 20 MB), both modes measured in one run.

Memory is what :mod:`bench.density` measures: the PSS summed over every process of the container (host mode: the
container's software as host processes), the median of five readings after each count. ``--bert-base`` measures a
bert-base-shape model instead (12 layers, hidden 768, random weights built in code, a 418 MB SavedModel), at
1, 2 and 3 copies by default. Writes ``bench/results/<name>.json``, ``.md`` and ``.png``. Run with
``make bench-density-modes``; nothing else may run MMS meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ is not a package on the path
    sys.path.insert(0, str(ROOT))

from bench.density import measure, saved_model_bytes  # noqa: E402
from bench.load import machine, machine_line  # noqa: E402
from mme.archive import write_archive  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("per-worker", "shared")
_MIB = 1024 * 1024
_MB = 1000 * 1000
#: Issue 11's targets.
RATIO_TARGET, RATIO_AT = 5.0, 20
INCREMENT_FACTOR, INCREMENT_ALLOWANCE_BYTES = 2.0, 20 * _MB


def write_bert_base(out_dir: Path) -> Path:
    """A bert-base-shape model folder, built in a child process: this process must never map TensorFlow's libraries,
    or the container's processes would share their pages with it and their PSS would read low."""
    script = (
        "import sys; from pathlib import Path; from mme.demo_models import BERT_BASE, write_random_model; "
        "print(write_random_model(Path(sys.argv[1]), name='bert-base', shape=BERT_BASE))"
    )
    answer = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", script, str(out_dir)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return Path(answer.stdout.strip().splitlines()[-1])


def increment_bytes(points: list[dict[str, Any]]) -> float:
    """The per-model increment: the least-squares slope of total PSS over the loaded points."""
    return statistics.linear_regression([p["models"] for p in points], [p["total"] for p in points]).slope


def summarize(modes: dict[str, dict[str, Any]], model_bytes: int) -> dict[str, Any]:
    """Ratios per count (per-worker / shared) and each mode's increment against the SavedModel's size."""
    per_worker = {p["models"]: p["total"] for p in modes["per-worker"]["points"]}
    shared = {p["models"]: p["total"] for p in modes["shared"]["points"]}
    ratios = {count: per_worker[count] / shared[count] for count in sorted(per_worker) if count in shared}
    increments = {mode: increment_bytes(modes[mode]["points"]) for mode in modes}
    return {
        "saved_model_bytes": model_bytes,
        "ratio_by_count": ratios,
        "increment_bytes": increments,
        "increment_over_size": {mode: value / model_bytes for mode, value in increments.items()},
        "increment_allowed_bytes": INCREMENT_FACTOR * model_bytes + INCREMENT_ALLOWANCE_BYTES,
    }


def markdown(report: dict[str, Any]) -> str:
    summary, modes = report["summary"], report["modes"]
    counts = [p["models"] for p in modes["shared"]["points"]]
    lines = [
        f"# Container memory per model host mode, {report['models']} ({report['when']})",
        "",
        machine_line(report) + "; mode: host (the container's software as host processes).",
        "",
        "PSS summed over every process of the container, MiB (median of 5 readings after each count):",
        "",
        "| models loaded | " + " | ".join(map(str, [0, *counts])) + " |",
        "| --- | " + " | ".join("---:" for _ in range(len(counts) + 1)) + " |",
    ]
    for mode in MODES:
        totals = [modes[mode]["base"]["total"], *(p["total"] for p in modes[mode]["points"])]
        lines.append(f"| {mode} | " + " | ".join(f"{t / _MIB:,.0f}" for t in totals) + " |")
    ratios = summary["ratio_by_count"]
    lines.append("| per-worker / shared | | " + " | ".join(f"{ratios[c]:.2f}" for c in counts) + " |")
    for mode in MODES:
        p50s = [p.get("p50_ms", 0.0) for p in modes[mode]["points"]]
        lines.append(f"| warm p50 ms, {mode} | | " + " | ".join(f"{v:.1f}" for v in p50s) + " |")
    size = summary["saved_model_bytes"]
    allowed = summary["increment_allowed_bytes"]
    lines += [
        "",
        f"SavedModel (unpacked archive) size: {size / _MB:.1f} MB. Per-model increment (least-squares slope over the "
        f"loaded points) against it; the target for shared mode is at most {INCREMENT_FACTOR:g} x size + 20 MB = "
        f"{allowed / _MB:.1f} MB:",
        "",
        "| mode | increment MB | increment / size | target met |",
        "| --- | ---: | ---: | --- |",
    ]
    for mode in MODES:
        increment = summary["increment_bytes"][mode]
        met = "yes" if increment <= allowed else "no"
        lines.append(
            f"| {mode} | {increment / _MB:.1f} | {summary['increment_over_size'][mode]:.2f} | "
            f"{met if mode == 'shared' else '-'} |"
        )
    if RATIO_AT in ratios:
        met = "met" if ratios[RATIO_AT] >= RATIO_TARGET else "NOT met"
        lines += ["", f"Ratio at {RATIO_AT} models: {ratios[RATIO_AT]:.2f}, target >= {RATIO_TARGET:g}: {met}."]
    lines += ["", f"![memory and latency against model count]({report['name']}.png)", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (memory_axis, latency_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, color in zip(MODES, ("#c44e52", "#4c72b0"), strict=True):
        points = report["modes"][mode]["points"]
        counts = [0, *(p["models"] for p in points)]
        totals = [report["modes"][mode]["base"]["total"], *(p["total"] for p in points)]
        memory_axis.plot(counts, [t / _MIB for t in totals], marker="o", color=color, label=mode)
        latency_axis.plot(counts[1:], [p["p50_ms"] for p in points], marker="o", color=color, label=mode)
    memory_axis.set_xlabel("models loaded")
    memory_axis.set_ylabel("PSS of the container's processes, MiB")
    memory_axis.set_title("memory")
    memory_axis.legend()
    latency_axis.set_xlabel("models loaded")
    latency_axis.set_ylabel("warm p50, ms")
    latency_axis.set_ylim(bottom=0)
    latency_axis.set_title("latency (models in turn)")
    latency_axis.legend()
    figure.suptitle(f"{report['models']}: per-worker and shared model host")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "build" / "demo-models")
    parser.add_argument("--bert-base", action="store_true", help="a bert-base-shape model instead of the demo ones")
    parser.add_argument("--counts", help="model counts to measure (default 1,5,10,20,50; 1,2,3 with --bert-base)")
    parser.add_argument("--name", help="results file names (default density-modes, or density-modes-bert-base)")
    args = parser.parse_args()
    counts = tuple(
        sorted({int(c) for c in (args.counts or ("1,2,3" if args.bert_base else "1,5,10,20,50")).split(",")})
    )
    name = args.name or ("density-modes-bert-base" if args.bert_base else "density-modes")

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "mode": "host",
        "name": name,
        "models": "bert-base-shape model" if args.bert_base else "demo-size models",
        "counts": counts,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="mme-density-modes-") as work_name:
        work = Path(work_name)
        if args.bert_base:
            model_dir = write_bert_base(work / "random")
            archives = [write_archive(model_dir, work / "bert-base.tar.gz")]
        else:
            archives = sorted(args.models.glob("*.tar.gz"))
            if not archives:
                parser.error(f"no *.tar.gz in {args.models}: run `.venv/bin/mme demo-models --out {args.models}`")
        # Demo models differ a little in size; the increment is compared with their mean.
        model_bytes = round(statistics.mean(saved_model_bytes(archive, work) for archive in archives))
        assert "tensorflow" not in sys.modules, "the benchmark's own process must not map TensorFlow (see above)"
        for mode in MODES:
            print(f"{mode}:", flush=True)
            base, points = measure(archives, work / mode, counts, {"MME_MODEL_HOST": mode})
            report["modes"][mode] = {"base": base, "points": points}
    report["summary"] = summarize(report["modes"], model_bytes)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(report))
    plot(report, RESULTS / f"{name}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()

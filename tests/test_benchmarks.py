"""The benchmark scripts as a session lent a GPU runs them (benchmarks/gpu_check.sh), here on the CPU at tiny
sizes: each runs, writes its JSON record and its rows (none with --no-results), and what it reports holds
(the fused step agrees with the readable one and launches fewer kernels). A GPU session has minutes:
a script that fails there costs the measurement, so it fails here first."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TINY = ["--batch-size", "2", "--init-channels", "4", "--layers", "3"]


def run(script: str, *args: str, out: Path, env=None) -> tuple[str, list[dict], list[str]]:
    """``python benchmarks/<script> args`` on the CPU (with ``env`` too), its JSON written under ``out`` and its
    RESULTS.md rows appended to a copy there: its output, the records it wrote and the rows it appended."""
    results = out / "RESULTS.md"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(BENCHMARKS / "RESULTS.md", results)
    env = {**os.environ, **(env or {}), "DNAS_BENCHMARK_OUT": str(out), "DNAS_BENCHMARK_RESULTS": str(results),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before = set((BENCHMARKS / "RESULTS.md").read_text().splitlines())
    added = [line for line in results.read_text().splitlines() if line not in before]
    return done.stdout, [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))], added


@pytest.mark.slow
def test_search_step_times_the_paths_and_their_first_steps_agree(tmp_path):
    out, [report], rows = run("search_step.py", "--device", "cpu", "--methods", "darts-v1,gdas", "--paths",
                              "readable,fused-cl,fused-cl-lanes-merged-dense-cudnnbn", "--steps", "1", "--warmup", "0",
                              "--no-results", *TINY, out=tmp_path)
    assert json.loads(out) == report and rows == []
    assert [(r["method"], r["path"]) for r in report["results"]] == [
        (m, p) for m in ("darts-v1", "gdas") for p in ("readable", "fused-cl", "fused-cl-lanes-merged-dense-cudnnbn")]
    for r in report["results"]:
        assert r["ms_per_step_median"] > 0 and r["speedup_over_readable"] > 0 and r["peak_memory_gb"] > 0
        # the first step of every path from the same weights and batches: float32 rounding apart (relative to
        # the largest value: up to a few 1e-3 for the weights' gradients, docs/speed.md; a wrong op, O(1))
        assert max(r["first_step_vs_readable"].values()) < 1e-2, r


@pytest.mark.slow
def test_search_e2e_searches_real_cifar10_on_both_paths(cifar10_root, tmp_path):
    out, [report], _ = run("search_e2e.py", "--device", "cpu", "--paths", "readable,fast", "--subset", "64",
                           "--epochs", "1", "--batch-size", "16", "--layers", "3", "--init-channels", "4",
                           "--cifar10", str(cifar10_root), "--eval-channels-last", "--no-results", out=tmp_path)
    assert report["failed"] == {} and set(report["runs"]) == {"readable", "fast"}
    for r in report["runs"].values():
        assert r["ms_per_step"] > 0 and r["ms_per_eval_batch"] > 0 and r["minutes_for_50_full_epochs"] > 0
        assert 0 < r["minutes_evaluated_after_the_last_only"] < r["minutes_for_50_full_epochs"]
        assert r["genotype"].startswith("Genotype(normal=")
    assert report["runs"]["fast"]["max_alpha_diff_to_readable"] < 1e-3


@pytest.mark.slow
def test_kernel_census_counts_fewer_kernels_fused_and_appends_its_row(tmp_path):
    counts = {}
    for path, options in (("readable", ["--no-results"]), ("fused", ["--merged"])):
        out, [report], rows = run("kernel_census.py", "--gpu-forms", "--channels-last", "--path", path, *options,
                                  "--rows", "3", *TINY, out=tmp_path / path)
        assert f"{report['kernels']} kernels moving {report['gb']} GB" in out
        assert report["gb"] > 0 and "convolution_backward" in {row["what"] for row in report["by_op"]}
        counts[path] = report["kernels"]
    assert counts["fused"] < counts["readable"] / 2
    out, [report], _ = run("kernel_census.py", "--gpu-forms", "--evaluation", "--no-results", "--rows", "3", *TINY,
                           out=tmp_path / "evaluation")
    assert report["path"] == "fused evaluation forward" and "convolution_backward" not in out
    assert 0 < report["kernels"] < counts["fused"] / 2
    _, [report], _ = run("kernel_census.py", "--gpu-forms", "--method", "gdas", "--dense", "--no-results", "--rows",
                         "3", *TINY, out=tmp_path / "gdas")  # every op, as the readable step has them all
    assert report["path"] == "fused dense samples" and 0 < report["kernels"] < counts["readable"] / 2
    kernels = {}  # the cells' training BatchNorms by dnas.kernels (Triton's interpreter), the ReLUs inside the
    for options in ([], ["--triton-batch-norm"]):  # separable ops with them
        _, [report], _ = run("kernel_census.py", "--gpu-forms", *options, "--no-results", "--rows", "60", *TINY,
                             out=tmp_path / f"triton{len(options)}", env={"TRITON_INTERPRET": "1"})
        kernels[len(options)] = {row["what"]: row["kernels"] for row in report["by_op"]}
    assert report["path"] == "fused Triton BatchNorms" and kernels[1]["triton _normalise"] > 0
    assert kernels[1]["clamp_min"] < kernels[0]["clamp_min"] and "triton _grad_input" not in kernels[0]
    # without --no-results, its row in its table: the method, path, layout and count it measured
    [row] = rows
    assert row.startswith("| ") and "| darts-v1 | fused merged | NHWC | GPU forms | 2 | " in row
    assert f"| {counts['fused']} |" in row


@pytest.mark.slow
def test_profile_step_ranks_the_ops_of_a_step(tmp_path):
    out, [report], _ = run("profile_step.py", "--device", "cpu", "--warmup", "1", "--rows", "5", "--path",
                           "fused-cudnnbn", *TINY, out=tmp_path)
    assert len(report["top"]) == 5 and report["total_ms"] > 0 and report["path"] == "fused-cudnnbn"
    assert report["wall_ms"] > 0 and not report["replayed"]
    assert sum(r["share"] for r in report["top"]) <= 1 and report["top"][0]["name"] in out


@pytest.mark.slow
def test_conv_variants_times_the_forms(tmp_path):
    out, [report], _ = run("conv_variants.py", "--device", "cpu", "--batch-size", "2", "--repeats", "1", "--only",
                           "pointwise", out=tmp_path)
    assert report["results"] and all(r["nchw-fp32"] > 0 and r["nhwc-fp32"] > 0 for r in report["results"])
    assert all(f"{r['case']:45}" in out for r in report["results"])
    out, [report], _ = run("conv_variants.py", "--device", "cpu", "--batch-size", "2", "--repeats", "1", "--only",
                           "depthwise 3x3 dil 1", "--forward-only", out=tmp_path / "forward")
    assert report["unit"] == "us per forward" and "us per forward, batch 2" in out
    assert len(report["results"]) == 12 and all(r["nchw-fp32"] > 0 for r in report["results"])  # 4 shapes, 3 forms
    assert sum("by Triton" in r["case"] for r in report["results"]) == 4  # by its interpreter
    out, [report], _ = run("conv_variants.py", "--device", "cpu", "--batch-size", "2", "--repeats", "1", "--only",
                           "depthwise of copies 3x3", "--forward-only", out=tmp_path / "copies")
    assert len(report["results"]) == 8 and all(r["nchw-fp32"] > 0 for r in report["results"])  # 4 shapes, 2 forms
    out, [report], _ = run("conv_variants.py", "--device", "cpu", "--batch-size", "2", "--repeats", "1", "--only",
                           "batchnorm", out=tmp_path / "batchnorm")
    assert [r["case"].rsplit(",", 1)[0] for r in report["results"][:4]] == [  # at batch 2 in one part; Triton's
        "batchnorm, weight only", "batchnorm, zero bias (cuDNN)", "batchnorm by parts", "batchnorm by Triton"]
    assert len(report["results"]) == 24 and all(r["nhwc-fp32"] > 0 for r in report["results"])  # by its interpreter


def test_gpu_check_names_only_paths_and_recipes_that_exist():
    """Each stage of gpu_check.sh names recipes and paths the scripts take, and its default runs every stage."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from search_step import PATHS, path_options
    finally:
        sys.path.remove(str(BENCHMARKS))
    from dnas.methods import get_method

    script = (BENCHMARKS / "gpu_check.sh").read_text()
    steps = re.findall(r"\bstep (\S+) (\S+) (\S+) \d+ \d+", script)
    e2es = re.findall(r"^\s*e2e (\S+) (\S+) (\S+) \d+ ?(.*?) ;;", script, re.M)
    assert len(steps) == 8 and len(e2es) == 6
    e2e_options = set(re.findall(r'add_argument\("(--[\w-]+)"', (BENCHMARKS / "search_e2e.py").read_text()))
    for _, methods, paths in steps:
        for method in methods.split(","):
            get_method(method)
        for path in paths.split(","):
            path_options(path, PATHS)
    for paths in re.findall(r"for path in ([^;]+); do", script):  # profile_step.py's
        for path in paths.split():
            path_options(path, PATHS)
    for _, method, paths, options in e2es:
        assert set(re.findall(r"--[\w-]+", options)) <= e2e_options
        get_method(method)
        for path in paths.split(","):
            path_options(path, ("readable", "fused", "fast"))
    stages = set(re.findall(r"^([\w-]+)\)", script, re.M))
    default = re.search(r'STAGES="\$\{\*:-([^}]*)\}"', script).group(1).split()
    assert set(default) | {"e2e-ways", "e2e-parts", "e2e-triton", "e2e-tritondw"} == stages


def test_gpu_check_cuts_each_stage_to_what_is_left_of_the_call(tmp_path):
    """The device tool stops a command at 600 s, and a stage killed with the call reports nothing: each stage's
    timeout is its own or what is left of BUDGET less 15 s, whichever is less (BUDGET=0: its own). The clock
    is a fixed ``date``, so that no second passes between the script's start and the stage."""
    script = (BENCHMARKS / "gpu_check.sh").read_text()
    within = re.search(r"^BUDGET=.*?^}", script, re.S | re.M).group(0)
    (tmp_path / "date").write_text("#!/bin/sh\necho 1000000\n")
    (tmp_path / "date").chmod(0o755)
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"

    def seconds(elapsed: int, asked: int, budget: str = "585") -> int:
        shell = f"{within}\nSTART=$((START - {elapsed})); within {asked}"
        done = subprocess.run(["sh", "-c", shell], env={**os.environ, "BUDGET": budget, "PATH": path},
                              capture_output=True, text=True, check=True)
        return int(done.stdout)

    assert [seconds(0, 150), seconds(500, 150), seconds(700, 150), seconds(700, 150, "0")] == [150, 70, 1, 150]
    assert len(re.findall(r'timeout (?:-s INT -k 10 )?"\$\(within ', script)) == 8  # every stage's timeout


def test_the_end_to_end_rate_leaves_out_an_epochs_last_smaller_batch(monkeypatch):
    """On a GPU an epoch's last, smaller batch runs eagerly, once an epoch of any size: its time belongs to
    the epoch's seconds, not to the steady rate that the 50-epoch estimate multiplies (a clock that full
    batches advance by 1, the smaller one by 100)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import search_e2e

    clock = [0.0]
    monkeypatch.setattr(search_e2e, "_now", lambda device: clock[0])

    class Loader:
        batch_size = 4

        def __iter__(self):
            return iter([(None, [0] * n) for n in (4, 4, 4, 4, 4, 2)])

    search = type("Search", (), {"device": "cpu", "train_loader": Loader()})()
    parts = search_e2e.EpochParts(skip=1)
    with search_e2e._Timed(search, "train_loader", parts):
        for _, y in search.train_loader:
            clock[0] += 1 if len(y) == 4 else 100
    assert parts.rate["train_loader"] == 1.0 and parts.batches["train_loader"] == (4, 6)

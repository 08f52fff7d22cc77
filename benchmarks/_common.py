"""What every benchmark script shares: peak memory and printing + writing its figures."""

import json
import os
import resource


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_figures(figures: dict, path: str, quiet: bool = False) -> None:
    """Prints the figures as JSON (unless `quiet`) and writes them to `path`."""
    if not quiet:
        print(json.dumps(figures, indent=2))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(figures, f, indent=2)


def limit_threads(threads) -> None:
    """Caps TensorFlow's op threads (call before any TF work), so two benchmarks can share
    the machine one core each; None keeps TensorFlow's default (all cores)."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_hf_anchor(script: str, arguments, cwd=None) -> dict:
    """Runs benchmarks/anchors/`script` in .bench-venvs/hf with `arguments` and returns
    the JSON line it prints last, or {"skipped": why} (no venv, or no JSON printed)."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    python = os.path.join(os.path.dirname(here), ".bench-venvs", "hf", "bin", "python")
    if not os.path.exists(python):
        return {"skipped": "no .bench-venvs/hf (run: bash benchmarks/setup_anchors.sh)"}
    proc = subprocess.run([python, os.path.join(here, "anchors", script), *arguments],
                          capture_output=True, text=True, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"skipped": proc.stderr.strip()[-300:]}

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

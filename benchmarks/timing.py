"""Interleaved timing shared by the benchmark scripts: the compared functions run alternately (A, B, A, B, ...) so
that load on a shared machine hits all of them alike."""

import statistics
import time


def interleaved(functions: dict, repeats: int, warmup: int = 1) -> dict:
    """Runs the functions alternately after `warmup` calls each; per function the CPU and wall seconds of every
    repeat: `{name: {"cpu": [...], "wall": [...]}}`."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: {"cpu": [], "wall": []} for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            cpu, wall = time.process_time(), time.perf_counter()
            function()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def onnxruntime_options(threads: int):
    """ONNX Runtime session options for `threads` intra-op threads (one inter-op) whose workers do not spin: an idle
    spinning worker takes a core from whatever runs next in the interleaved loop (ours ~7% slower at 2 threads);
    ORT's own time is the same without spinning (measured)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1, clock: str = "wall") -> dict:
    """Median seconds per function on `clock` ("wall" or "cpu") of interleaved runs."""
    times = interleaved(functions, repeats, warmup)
    return {name: statistics.median(values[clock]) for name, values in times.items()}

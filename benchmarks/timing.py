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


def interleaved_medians(functions: dict, repeats: int, warmup: int = 1, clock: str = "wall") -> dict:
    """Median seconds per function on `clock` ("wall" or "cpu") of interleaved runs."""
    times = interleaved(functions, repeats, warmup)
    return {name: statistics.median(values[clock]) for name, values in times.items()}

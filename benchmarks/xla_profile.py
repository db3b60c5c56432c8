"""Per-op times of one call of a compiled program, from a `jax.profiler` trace (XLA:CPU), shared by the
profile_*.py benchmarks.

The compiled HLO names each (fused) op and its metadata says which jax op it came from; the trace's
events carry those names. Ops on two threads may overlap, so a table's rows can add up to more than the
call's wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax


def op_labels(hlo: str, full_path: bool = False) -> dict:
    """Compiled HLO text -> {op name: (output shape, jax op)}: the jax op's name and its enclosing scope,
    or (full_path) its whole path through loops and jits."""
    labels = {}
    for m in re.finditer(r"^\s*%?([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo, re.M):
        path = m.group(3).split("/")
        labels[m.group(1)] = (m.group(2).split("{")[0], m.group(3) if full_path else "/".join(path[-2:]))
    return labels


def op_times(run, hlo: str, calls: int = 1, full_path: bool = False):
    """Trace `run()` (which blocks until its results are ready) -> (ms per call, count per call), both
    Counters keyed by (op kind, output shape, jax op), for the ops `hlo` names (see `op_labels`)."""
    labels = op_labels(hlo, full_path)
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        run()
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(sorted(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True))[-1]))
    ms, count = collections.Counter(), collections.Counter()
    for e in trace["traceEvents"]:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "end:")) or name not in labels:
            continue
        key = (re.sub(r"\.\d+$", "", name),) + labels[name]
        ms[key] += e["dur"] / 1e3 / calls
        count[key] += 1 / calls
    return ms, count


def print_table(ms, count, top: int, unit: str = "call", width: int = 40) -> None:
    """The `top` rows by time; each jax op cut to its last `width` characters."""
    print(f"{'ms/' + unit:>9} {'x/' + unit:>8}  op kind / output / jax op")
    for key, t in ms.most_common(top):
        kind, shape, op = key
        print(f"{t:9.2f} {count[key]:8.1f}  {kind:28s} {shape} {op[-width:]}")
    print(f"# sum of all traced ops: {sum(ms.values()):.1f} ms/{unit} (ops on two threads overlap; a loop's `while` "
          "op counts its body's time too)")

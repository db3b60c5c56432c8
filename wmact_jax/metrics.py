"""Host-side metrics: JSONL + TensorBoard logging, the progress-bar text, the summary table.

Why JSONL next to TensorBoard: one JSON object per line is trivially loaded by pandas or a plotting
script without TensorBoard's protobuf readers, and survives a killed run line by line.
Only process 0 should construct an enabled `MetricsWriter` (see `distributed.is_main_process`).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

# Small non-scalar metrics are written to JSONL as lists (larger ones are summarised).
_MAX_LIST = 64


def to_host(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Device arrays -> Python numbers (one transfer for the whole dict; this also syncs).

    Scalars become float/int/bool; small arrays become lists; big ones their mean.
    """
    host = jax.device_get(dict(metrics))
    out: dict[str, Any] = {}
    for k, v in host.items():
        a = np.asarray(v)
        if a.dtype.kind not in "biuf":
            out[k] = v if isinstance(v, (str, int, float, bool)) else str(v)
        elif a.ndim == 0:
            out[k] = a.item()
        elif a.size <= _MAX_LIST:
            out[k] = a.tolist()
        else:
            out[k] = float(a.mean())
    return out


def _json_safe(v: Any) -> Any:
    """Strict JSON: NaN/inf become null (Python's json would write bare NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def read_jsonl(path: str) -> list[dict]:
    """All complete records of a metrics file (a line cut by a kill is skipped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def truncate_jsonl(path: str, max_step: int) -> None:
    """Drops records after `max_step`: a resumed run re-does those iterations and logs them again."""
    if not os.path.exists(path):
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= max_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


class MetricsWriter:
    """Writes metrics per step to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tb``).

    Args:
      workdir: the run directory.
      enabled: False on processes other than 0 (every method is then a no-op).
      resume_step: when resuming, records after this step are dropped (JSONL) / purged (TB).
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(workdir, "tb")
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(self.jsonl_path, resume_step)
        self._file = open(self.jsonl_path, "a", buffering=1)  # line-buffered: survives a kill
        from tensorboardX import SummaryWriter  # imported lazily: only process 0 needs it
        kwargs = {"purge_step": resume_step + 1} if resume_step is not None else {}
        self._tb = SummaryWriter(self.tb_dir, **kwargs)

    def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """Logs `metrics` (device or host values) at `step` under `prefix`; returns the host dict."""
        host = to_host(metrics)
        if not self.enabled:
            return host
        record = {"step": int(step), "time": time.time()}
        record.update({prefix + k: _json_safe(v) for k, v in host.items()})
        self._file.write(json.dumps(record) + "\n")
        for k, v in host.items():
            if isinstance(v, bool):
                v = float(v)
            if isinstance(v, (int, float)):
                self._tb.add_scalar(prefix + k, v, int(step))
            elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                self._tb.add_histogram(prefix + k, np.asarray(v, np.float64), int(step))
        return host

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled and self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def format_postfix(metrics: Mapping[str, Any]) -> str:
    """Progress-bar text: live success rate, mean turns, tokens/s (those present)."""
    parts = []
    sr, turns, tps = (_num(metrics.get(k)) for k in ("success_rate", "mean_turns", "tokens_per_s"))
    if sr is not None:
        parts.append(f"success {100 * sr:.1f}%")
    if turns is not None:
        parts.append(f"turns {turns:.2f}")
    if tps is not None:
        parts.append(f"{tps / 1000:.1f}k tok/s" if tps >= 1000 else f"{tps:.0f} tok/s")
    return " | ".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def summary_markdown(before: Mapping[str, Any], after: Mapping[str, Any], before_step: int,
                     after_step: int) -> str:
    """A before/after table of the headline evaluation metrics (markdown), e.g. iteration 0 vs final.

    Only success, turns, efficacy, optimality gap, format errors and cycling of each evaluation mode are
    shown (everything else is in metrics.jsonl), sorted by mode.
    """
    headline = ("success_rate", "mean_turns", "efficacy", "optimality_gap", "format_error_rate", "cycled",
                "turn_cap")
    keys = [k for k in before if _num(before[k]) is not None or _num(after.get(k)) is not None]
    keys += [k for k in after if k not in before and _num(after[k]) is not None]
    picked = [k for k in keys if k.rsplit("/", 1)[-1] in headline]
    keys = sorted(picked or keys, key=lambda k: (k.rsplit("/", 1)[0], headline.index(k.rsplit("/", 1)[-1])
                                                  if k.rsplit("/", 1)[-1] in headline else 99))
    lines = [f"| metric | iteration {before_step} | iteration {after_step} | change |",
             "| --- | ---: | ---: | ---: |"]
    for k in keys:
        b, a = _num(before.get(k)), _num(after.get(k))
        change = "-" if a is None or b is None else f"{a - b:+.4g}"
        lines.append(f"| {k} | {_fmt(b)} | {_fmt(a)} | {change} |")
    return "\n".join(lines)

"""benchmarks/bench_gpu.py --cpu-smoke: every row and section of the GPU benchmark runs, at tiny sizes on the CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TABLES = ["convnext1d_big", "convnext1d", "rave_v2 phase 1", "rave_v2 phase 2", "convnext2d_spec_big"]
MODES = ["eager fp32", "bf16", "bf16 + compile"]


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_cpu_smoke_runs_every_row_and_section(tmp_path: Path, cli_env: dict[str, str]) -> None:
    out = tmp_path / "bench.json"
    script = REPO / "benchmarks" / "bench_gpu.py"
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--json", str(out)], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["header"]["torch"] and report["header"]["cpu_count"] >= 1
    assert [t["model"] for t in report["tables"]] == TABLES
    for table in report["tables"]:
        rows = {r["mode"]: r for r in table["rows"]}
        assert list(rows) == MODES, table["model"]
        for mode, row in rows.items():
            where = f"{table['model']} / {mode}"
            assert row["error"] is None, f"{where}: {row['error']}"
            assert positive(row["steps_per_s"]) and positive(row["audio_s_per_s"]), where
            assert 0 <= row["data_wait_fraction"] <= 1, where
            assert positive(row["peak_mem_gib"]), where
        assert rows["bf16 + compile"]["compile_s"] is not None, table["model"]
        assert rows["bf16"]["amp"] == "torch.bfloat16" and rows["eager fp32"]["amp"] is None, table["model"]

    rounds = {r["k"]: r for r in report["packed"]["rounds"]}
    assert sorted(rounds) == [1, 2]
    for k, r in rounds.items():
        assert r["error"] is None, f"K={k}: {r['error']}"
        assert len(r["trials"]) == k
        assert positive(r["total_steps_per_s"]) and positive(r["total_audio_s_per_s"]), f"K={k}"
        assert all(positive(t["steps_per_s"]) and positive(t["audio_s_per_s"]) for t in r["trials"]), f"K={k}"

    assert "one device" in report["ddp"]["skipped"]
    assert [g["verdict"] for g in report["goals"]][2] == "n/a"  # K=4 is not run in the smoke
    assert "Goals" in proc.stdout and "Packed trials" in proc.stdout

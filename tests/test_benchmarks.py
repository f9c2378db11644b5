"""The device benchmark's smoke mode runs here, so the script a GPU session gets is sound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"draws", "flows+inverse", "inverse+window", "observables", "healpix", "to-arrow",
          "end-to-end"}


def test_gpu_throughput_quick_on_cpu_measures_every_stage_and_both_layouts(tmp_path):
    output = tmp_path / "throughput.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"),
                    "--device", "cpu", "--quick", "--epochs", "1", "--json", str(output)],
                   check=True, cwd=tmp_path, timeout=600, capture_output=True,
                   env=os.environ | {"OMP_NUM_THREADS": "1"})
    result = json.loads(output.read_text())
    assert result["header"]["device"] == "cpu"
    sample = {row["stage"]: row for row in result["rows"] if row["section"] == "sample"}
    assert set(sample) == STAGES
    assert all(row["per_s"] > 0 for row in sample.values())
    assert sample["end-to-end"]["members"] == 10
    train = [row for row in result["rows"] if row["section"] == "train"]
    assert [row["members"] for row in train] == [1, 2]
    assert all(row["seconds_per_member_epoch"] > 0 for row in train)

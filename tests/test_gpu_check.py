"""bench/gpu_check.sh in CPU mode: every part (CUDA test cases' CPU counterparts, kernel, valuation
overhead, pretraining throughput, generation) runs at small sizes and lands in one table."""
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_OUT=str(out),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["bash", os.path.join(root, "bench", "gpu_check.sh"), "--cpu"], capture_output=True,
                          text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert table.startswith("## gpu_check (cpu)")
    lines = table.splitlines()
    start = lines.index("| part | status | seconds | result |") + 2  # the summary table, not the outputs
    rows = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        rows.append(line)
    parts = {r.split("|")[1].strip(): r for r in rows}
    assert set(parts) == {"tests", "kernel", "valuation", "pretrain", "generate"}
    assert all("| ok |" in r for r in parts.values()), rows
    assert "valuation on" in parts["valuation"] and "ratio" in parts["valuation"]
    assert "tokens/s" in table and "tiny" in parts["pretrain"]

"""The house layout, kept by the suite: every line of the package, its tests and benchmarks within 120 columns,
two blank lines between top-level definitions, continuation lines aligned (pycodestyle, configured in
setup.cfg)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_keeps_the_house_layout():
    found = subprocess.run([sys.executable, "-m", "pycodestyle", "src", "tests", "benchmarks"], cwd=ROOT,
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stdout + found.stderr

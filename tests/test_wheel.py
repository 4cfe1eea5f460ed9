"""The built wheel works alone: installed into a fresh venv outside the repository, through constraints.txt.

Deselected by default (marker ``wheel``); run with ``make test-wheel`` (CI does) or
``python -m pytest -m wheel tests/test_wheel.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "metaopt" / "_version.py").read_text())[1]


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """Build the sdist, then the wheel from it (which proves the sdist is complete), outside the repository."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with this venv's setuptools (pinned, no download); the wheel is built from the sdist.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_the_package_only(dists):
    wheel = dists["wheel"]
    assert wheel.name == f"metaopt-{VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "metaopt/py.typed" in names
    assert {"metaopt/__init__.py", "metaopt/_version.py", "metaopt/cli.py",
            "metaopt/experiments/maml_rl.py", "metaopt/envs/__init__.py", "metaopt/verify/__init__.py"} <= set(names)
    top = {n.split("/")[0] for n in names}
    assert top == {"metaopt", f"metaopt-{VERSION}.dist-info"}, top  # no tests/, benchmarks/, examples/, docs/
    metadata = zipfile.ZipFile(wheel).read(f"metaopt-{VERSION}.dist-info/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in requires if "extra ==" not in r)
    assert core == ["gymnasium", "numpy", "torch", "tqdm"], requires
    entry_points = zipfile.ZipFile(wheel).read(f"metaopt-{VERSION}.dist-info/entry_points.txt").decode()
    assert "metaopt = metaopt.cli:main" in entry_points


def test_sdist_holds_the_sources(dists):
    names = tarfile.open(dists["sdist"]).getnames()
    prefix = f"metaopt-{VERSION}/"
    for path in ("pyproject.toml", "README.md", "metaopt/py.typed", "metaopt/_version.py"):
        assert prefix + path in names, path


def test_wheel_installs_and_runs_in_a_fresh_venv(dists, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, metaopt = env_dir / "bin" / "python", env_dir / "bin" / "metaopt"
    install = ("-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", dists["wheel"])
    # Resolve first without installing: fail before any download of a CUDA build of torch.
    _run(python, *install[:3], "--dry-run", "--report", tmp_path / "plan.json", *install[3:], cwd=tmp_path)
    plan = {p["metadata"]["name"].lower(): p["metadata"]["version"]
            for p in json.loads((tmp_path / "plan.json").read_text())["install"]}
    assert not [n for n in plan if n.startswith("nvidia") or n == "triton"], f"would install CUDA packages: {plan}"
    assert plan["torch"].startswith("2.13.0") and plan["metaopt"] == VERSION, plan
    _run(python, *install, cwd=tmp_path)

    where = _run(python, "-c", "import metaopt, sys; print(metaopt.__file__); print('torch' in sys.modules)",
                 cwd=tmp_path).split()
    assert Path(where[0]).is_relative_to(env_dir) and where[1] == "False"  # the installed copy, torch not loaded
    assert "maml-rl" in _run(metaopt, "--help", cwd=tmp_path)
    assert _run(metaopt, "--version", cwd=tmp_path).strip() == f"metaopt {VERSION}"
    _run(python, "-c", "import metaopt; assert callable(metaopt.adapt) and 'adapt' in dir(metaopt)", cwd=tmp_path)
    out = tmp_path / "run"
    _run(metaopt, "maml-rl", "--preset", "smoke", "--out", out, "--no-progress", "--no-plot", cwd=tmp_path)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header + the smoke preset's 3 iterations
    assert {"config.json", "metrics.json", "checkpoint.pt"} <= {p.name for p in out.iterdir()}

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
NAME = "metaopt-torch"  # the distribution name (the index's `metaopt` is another project); the import name is metaopt
DIST = f"metaopt_torch-{VERSION}"  # the file-name form of NAME and VERSION


def _run(*cmd: str | Path, cwd: Path, timeout: float = 600, code: int = 0) -> str:
    """Run ``cmd``; assert it exits with ``code``; return its stdout (stdout and stderr when ``code`` is not 0)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout if code == 0 else proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """Build the sdist, then the wheel from it (which proves the sdist is complete), outside the repository."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with this venv's setuptools (pinned, no download); the wheel is built from the sdist.
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


def test_wheel_holds_the_package_and_the_license(dists):
    wheel = dists["wheel"]
    assert wheel.name == f"{DIST}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "metaopt/py.typed" in names
    assert {"metaopt/__init__.py", "metaopt/_version.py", "metaopt/cli.py",
            "metaopt/experiments/maml_rl.py", "metaopt/envs/__init__.py", "metaopt/verify/__init__.py"} <= set(names)
    top = {n.split("/")[0] for n in names}
    assert top == {"metaopt", f"{DIST}.dist-info"}, top  # no tests/, benchmarks/, examples/, docs/
    license_text = zipfile.ZipFile(wheel).read(f"{DIST}.dist-info/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "END OF TERMS AND CONDITIONS" in license_text  # the full text
    metadata = zipfile.ZipFile(wheel).read(f"{DIST}.dist-info/METADATA").decode()
    fields = [line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line]
    assert ["Name", NAME] in fields and ["License-Expression", "Apache-2.0"] in fields and \
        ["License-File", "LICENSE"] in fields, fields
    classifiers = {v for k, v in fields if k == "Classifier"}
    assert any(c.startswith("Development Status ::") for c in classifiers), classifiers
    assert "Programming Language :: Python :: 3.11" in classifiers, classifiers
    assert any(k == "Author" for k, _ in fields), fields
    requires = [v for k, v in fields if k == "Requires-Dist"]
    core = sorted(r.split(">")[0].split("=")[0].split("<")[0] for r in requires if "extra ==" not in r)
    assert core == ["gymnasium", "numpy", "torch", "tqdm"], requires
    # Extras that name the project itself name it by its distribution name (else pip would fetch another project).
    assert not [r for r in requires if re.match(r"metaopt\b(?!-torch)", r)], requires
    entry_points = zipfile.ZipFile(wheel).read(f"{DIST}.dist-info/entry_points.txt").decode()
    assert "metaopt = metaopt.cli:main" in entry_points


def test_sdist_holds_the_sources_and_the_license_and_no_tests(dists):
    names = tarfile.open(dists["sdist"]).getnames()
    prefix = f"{DIST}/"
    for path in ("pyproject.toml", "README.md", "LICENSE", "CITATION.cff", "CHANGELOG.md", "constraints.txt",
                 "metaopt/py.typed", "metaopt/_version.py", "metaopt/cli.py"):
        assert prefix + path in names, path
    # The tests need the repository (examples, benchmarks, docs snippets, helpers): the sdist ships none of them.
    assert not [n for n in names if n.startswith(prefix + "tests")], [n for n in names if "tests" in n][:5]


def test_wheel_installs_by_name_with_extras_and_runs_in_a_fresh_venv(dists, tmp_path):
    """``pip install 'metaopt-torch[higher,torchopt]'`` (found beside the built files) gives this package."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python, metaopt = env_dir / "bin" / "python", env_dir / "bin" / "metaopt"
    install = ("-m", "pip", "install", "--quiet", "-c", ROOT / "constraints.txt", "--find-links",
               dists["wheel"].parent, f"{NAME}[higher,torchopt]=={VERSION}")
    # Resolve first without installing: fail before any download of a CUDA build of torch.
    _run(python, *install[:3], "--dry-run", "--report", tmp_path / "plan.json", *install[3:], cwd=tmp_path)
    report = json.loads((tmp_path / "plan.json").read_text())["install"]
    plan = {p["metadata"]["name"].lower(): p["metadata"]["version"] for p in report}
    assert not [n for n in plan if n.startswith("nvidia") or n == "triton"], f"would install CUDA packages: {plan}"
    assert plan["torch"].startswith("2.13.0") and plan[NAME] == VERSION, plan
    assert {"higher", "torchopt"} <= set(plan) and "matplotlib" not in plan, plan
    (ours,) = [p for p in report if p["metadata"]["name"].lower() == NAME]
    assert ours["download_info"]["url"] == dists["wheel"].as_uri(), ours["download_info"]  # the built wheel
    _run(python, *install, cwd=tmp_path)

    where = _run(python, "-c", "import metaopt, sys; print(metaopt.__file__); print('torch' in sys.modules)",
                 cwd=tmp_path).split()
    assert Path(where[0]).is_relative_to(env_dir) and where[1] == "False"  # the installed copy, torch not loaded
    assert "maml-rl" in _run(metaopt, "--help", cwd=tmp_path)
    assert _run(metaopt, "--version", cwd=tmp_path).strip() == f"metaopt {VERSION}"
    _run(python, "-c", "import metaopt; assert callable(metaopt.adapt) and 'adapt' in dir(metaopt)", cwd=tmp_path)
    _run(metaopt, "verify", "--checks", "torchopt-toy,higher-toy", cwd=tmp_path)  # the two extras' engines

    # No matplotlib here (the plot extra is not installed): a plotting command stops at once, naming --no-plot.
    _run(python, "-c", "import matplotlib", cwd=tmp_path, code=1)
    out = tmp_path / "run"
    for argv in (["maml-rl", "--preset", "smoke", "--no-progress"], ["study", "--quick"]):
        text = _run(metaopt, *argv, "--out", out, cwd=tmp_path, code=2)
        assert "--no-plot" in text and "matplotlib" in text and "Traceback" not in text, text
        assert not out.exists()
    # ... and runs with --no-plot.
    _run(metaopt, "maml-rl", "--preset", "smoke", "--out", out, "--no-progress", "--no-plot", cwd=tmp_path)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header + the smoke preset's 3 iterations
    assert {"config.json", "metrics.json", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.png"))
    study = tmp_path / "study"
    _run(metaopt, "study", "--quick", "--parts", "scale", "--workers", "1", "--out", study, "--no-plot",
         cwd=tmp_path)
    assert (study / "study.md").is_file() and not list(study.glob("*.png"))

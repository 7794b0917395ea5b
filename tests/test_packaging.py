"""The wheel: built from the repository, installed into a scratch venv, used from outside the repository.

The scratch venv gets the heavy dependencies (torch, sentence-transformers, ...) without installing them again:
a `.pth` file puts this interpreter's site-packages on its path. Python adds a path named in a `.pth` file
without processing that folder's own `.pth` files, so the repository's editable install is not loaded there.
"""

from __future__ import annotations

import itertools
import json
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "multi_modal_rag"
TEMPLATE = "multi_modal_rag/index_templates/papers.json"

pytestmark = pytest.mark.node


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(out: Path) -> Path:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)], cwd=out.parent)
    (wheel,) = out.glob("multi_modal_rag-*.whl")
    return wheel


def _scratch_venv(root: Path, wheel: Path) -> Path:
    """A venv with the wheel installed and this interpreter's site-packages visible through a `.pth` file."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    python = root / "bin" / "python"
    # This interpreter's pip installs into the scratch venv (pip >= 22.3); the .pth is written afterwards, so
    # pip does not see the repository's own installation there.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], cwd=root.parent)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout.strip()
    # Our site-packages, and any other one on our path (user site, or one named by a .pth file of ours).
    ours = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    ours += [p for p in sys.path if Path(p).name in {"site-packages", "dist-packages"}]
    (Path(purelib) / "_mmrag_test_deps.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(ours) if Path(p).is_dir()))
    return python


def test_wheel_installs_and_runs_outside_the_repository(tmp_path, settings, index_name, sample_path):
    wheel = _build_wheel(tmp_path / "wheels")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert TEMPLATE in names
    missing = [p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py") if p.relative_to(REPO).as_posix() not in names]
    assert not missing, f"modules left out of the wheel (package discovery): {missing}"

    venv = tmp_path / "venv"
    python = _scratch_venv(venv, wheel)
    work = tmp_path / "work"  # every command runs here, outside the repository
    work.mkdir()

    probe = _run(
        [
            str(python),
            "-c",
            "import json, multi_modal_rag; from importlib.resources import files; "
            "t = files('multi_modal_rag.index_templates').joinpath('papers.json'); "
            "print(json.dumps([multi_modal_rag.__file__, str(t), json.loads(t.read_text(encoding='utf-8'))]))",
        ],
        cwd=work,
    )
    module, template_path, template = json.loads(probe.stdout)
    assert Path(module).resolve().is_relative_to(venv.resolve()), module
    assert Path(template_path).resolve().is_relative_to(venv.resolve()), template_path
    assert template == json.loads((REPO / "index_templates" / "papers.json").read_text(encoding="utf-8"))

    with sample_path.open(encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, 20))
    (work / "papers.jsonl").write_text("".join(lines), encoding="utf-8")
    mmrag = str(venv / "bin" / "mmrag")
    url = ["--url", settings.url]

    summary = json.loads(_run([mmrag, "index", "papers.jsonl", "--index", index_name, "--model", "minilm", "--json", *url], cwd=work).stdout)
    assert (summary["created"], summary["failed"]) == (20, 0)

    first = json.loads(lines[0])
    hits = json.loads(_run([mmrag, "search", first["title"], "--index", index_name, "--size", "3", "--json", *url], cwd=work).stdout)
    assert hits[0]["id"] == first["id"]

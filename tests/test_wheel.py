"""A non-editable wheel carries recipes/, templates/ and datasets/ and works in a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("minicpm_recipes-*.whl")
    return path


def test_wheel_contains_the_data_folders(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("minicpm_recipes/_data/recipes/models.yaml",
                     "minicpm_recipes/_data/recipes/llamafactory.yaml",
                     "minicpm_recipes/_data/templates/llamafactory/train.yaml.j2",
                     "minicpm_recipes/_data/templates/deepspeed/ds_config.json.j2",
                     "minicpm_recipes/_data/templates/accelerate/fsdp_config.yaml.j2",
                     "minicpm_recipes/_data/templates/launch/node.sh.j2"):
        assert required in names, required
    assert any(n.startswith("minicpm_recipes/_data/datasets/") for n in names)


def test_wheel_installs_in_a_fresh_venv_and_renders(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([str(env_dir / "bin" / "minicpm-recipes"), "render", "dpo"], cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load((work / "configs" / "minicpm-sala_lora_dpo.yaml").read_text(encoding="utf-8"))
    assert doc["stage"] == "dpo" and doc["template"] == "cpm4"
    # data comes from the installed package, not from this source checkout
    assert "/_data/datasets/" in doc["dataset_dir"]
    assert str(REPO) not in doc["dataset_dir"]

"""The pip and conda dependency lists agree, and the layout the README promises exists."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_environment_yml_pins_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    assert sorted(d for d in pip_section if d != "-e .") == sorted(project["dependencies"])
    assert "-e ." in pip_section
    assert "python=3.11" in environment["dependencies"]


def test_torch_is_pinned_and_opencv_is_headless():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
    assert "opencv-python-headless" in dependencies and "opencv-python" not in dependencies


def test_outputs_holds_only_its_readme_in_git():
    ignore = (ROOT / ".gitignore").read_text().split()
    assert "/outputs/*" in ignore and "!/outputs/README.md" in ignore
    assert "/data/" in ignore and "/.venv/" in ignore
    assert (ROOT / "outputs" / "README.md").is_file()


def test_ci_runs_exactly_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()

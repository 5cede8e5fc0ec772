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


def test_the_license_file_is_apache_2_and_the_package_metadata_names_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    # the standard text: its title, its last section and the appendix that tells how to apply it
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "9. Accepting Warranty or Additional Liability." in text
    assert "END OF TERMS AND CONDITIONS" in text and "http://www.apache.org/licenses/LICENSE-2.0" in text

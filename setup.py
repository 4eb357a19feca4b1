"""Build step only (the project is configured in pyproject.toml): a built package (a wheel,
`pip install .`) carries copies of schema/ and ROW/ under stage0/_bundled/, which `logline
migrate`, `seed` and `init` read when they do not run from a checkout (stage0.config).
Editable installs read the checkout itself, so nothing is copied for them."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("schema", "ROW")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in BUNDLED:
            target = Path(self.build_lib) / "stage0" / "_bundled" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / name, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})

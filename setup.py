"""Package discovery; all metadata lives in pyproject.toml.

kernels/ and recipes/ sit at the top of the repository but install as minibridge.kernels and
minibridge.recipes (PyPI has an unrelated top-level `kernels`), so only `minibridge` lands in
site-packages. Every folder below minibridge/, kernels/ and recipes/ is found here, so a new subpackage
needs no edit (tests/test_packaging.py checks that the wheel holds every file of the source tree).
"""

from setuptools import find_namespace_packages, setup

SOURCES = {"minibridge": "minibridge", "minibridge.kernels": "kernels", "minibridge.recipes": "recipes"}


def _packages() -> list[str]:
    found = []
    for name, folder in SOURCES.items():
        subs = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
        found += [name] + [f"{name}.{sub}" for sub in subs]
    return found


setup(packages=_packages(), package_dir={k: v for k, v in SOURCES.items() if k != v})

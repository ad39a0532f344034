"""Package discovery; all metadata lives in pyproject.toml.

kernels/ and recipes/ sit at the top of the repository but install as minibridge.kernels and
minibridge.recipes, so only `minibridge` lands in site-packages. The kernels' package is one folder
down, in kernels/minibridge_kernels/: kernels/ itself holds no __init__.py, so from the checkout root
(the first entry of sys.path for `python -m` and `python -c`) `import kernels` still finds the installed
`kernels` distribution that transformers imports, never our folder (a folder without __init__.py only
becomes a namespace package when no regular package of that name exists anywhere on sys.path).
tests/test_imports_from_root.py fails when any top-level name of the checkout shadows an installed one.
Every folder below the mapped ones is found here, so a new subpackage needs no edit
(tests/test_packaging.py checks that the wheel holds every file of the source tree).
"""

from setuptools import find_namespace_packages, setup

# import name -> source folder: the one place this mapping is written (the tests read it from here)
SOURCES = {"minibridge": "minibridge", "minibridge.kernels": "kernels/minibridge_kernels",
           "minibridge.recipes": "recipes"}


def _packages() -> list[str]:
    found = []
    for name, folder in SOURCES.items():
        subs = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
        found += [name] + [f"{name}.{sub}" for sub in subs]
    return found


setup(packages=_packages(), package_dir={k: v for k, v in SOURCES.items() if k != v})

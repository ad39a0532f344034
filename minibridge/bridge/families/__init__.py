"""The Hugging Face side of each model family, one module each (llama.py, gemma3.py, ...): every module
here registers its HFFamily (bridge/family.py) when imported, and this package imports them all, so
a new family file is found without other edits."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

"""How the stand-in loads a function: Fission's `module.function` from a file or directory."""

import importlib.util
import os
import sys


def load_function(filepath, function_name):
    module_name, _, attr = function_name.rpartition(".")
    if os.path.isdir(filepath):
        sys.path.insert(0, filepath)
        module = importlib.import_module(module_name)
    else:
        spec = importlib.util.spec_from_file_location(module_name or "userfunc", filepath)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, attr or "main")

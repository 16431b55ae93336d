"""A function for the Python stand-in: reads what the server wrote into its USERFUNCVOL."""

import json
import os


def main():
    path = os.path.join(os.environ.get("USERFUNCVOL", "/userfunc"), "state.json")
    with open(path) as f:
        state = json.load(f)
    return f"hello from a Fission-style Python server ({state['dep']})"

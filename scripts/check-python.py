"""Stops `make` early, with one line, when this Python is not the one Scout's lock is resolved
for (pyproject.toml, requires-python): packages locked for another version may not install."""
import re
import sys

try:
    import tomllib
except ImportError:  # before 3.11
    sys.exit(f"Scout needs Python 3.11 (pyproject.toml), this is {sys.version.split()[0]}: run make with PYTHON=python3.11.")

with open("pyproject.toml", "rb") as source:
    wanted = tomllib.load(source)["project"]["requires-python"]
have = sys.version_info[:2]
for operator, version in re.findall(r"(>=|<)\s*(\d+\.\d+)", wanted):
    bound = tuple(int(part) for part in version.split("."))
    if (operator == ">=" and have < bound) or (operator == "<" and have >= bound):
        sys.exit(f"Scout needs Python {wanted} (pyproject.toml), this is {sys.version.split()[0]}: "
                 "run make with PYTHON=python3.11.")

"""Package layout that setup.cfg cannot say: the Nix expressions in the
top-level nix/ folder travel in the wheel as package data of
`builders.nixexpr`, where builders/nixbuild/nix.py finds them once installed."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["app", "app.*", "builders", "builders.*",
                                    "storage", "storage.*"]) + ["builders.nixexpr"],
    package_dir={"builders.nixexpr": "nix"},
    package_data={"app": ["templates/*.html"], "builders.nixexpr": ["*.nix"]},
)

"""Build hook: generates the gRPC stubs from the proto files while building.

Everything else about the package is in pyproject.toml. The generated code
(``expresscache/v1/cache_pb2*.py`` and their ``.pyi`` typing stubs) is written
straight into the build directory, so it is always made from the proto the
wheel is built from and is never checked in.

The proto files are found in ``proto/`` next to this file (an sdist, which
copies them in) or at the repository root two levels up (a checkout).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTOS = ["expresscache/v1/cache.proto"]


def proto_root() -> Path:
    for candidate in (HERE / "proto", HERE.parent.parent / "proto"):
        if all((candidate / p).is_file() for p in PROTOS):
            return candidate
    raise FileNotFoundError(
        f"cannot find {PROTOS} under {HERE / 'proto'} or {HERE.parent.parent / 'proto'}"
    )


def plugin(name: str) -> str:
    """Path of a protoc plugin installed with the build requirements."""
    # pip's isolated build environment puts its scripts directory on PATH;
    # a non-isolated build has them next to this interpreter.
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if found is None:
        raise FileNotFoundError(f"{name} not found: is mypy-protobuf installed?")
    return found


def generate(out: Path) -> None:
    import grpc_tools  # a build requirement: only needed here

    well_known = resources.files(grpc_tools) / "_proto"
    root = proto_root()
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *PROTOS,
    ]
    subprocess.run(cmd, check=True)
    # protoc writes modules, not packages: make expresscache.v1 importable.
    init = out / "expresscache" / "v1" / "__init__.py"
    init.write_text(
        '"""Generated from proto/expresscache/v1/cache.proto at build time:'
        ' the wire messages (cache_pb2) and gRPC stubs (cache_pb2_grpc)."""\n'
    )


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        generate(Path(self.build_lib))


class SdistWithProtos(sdist):
    """An sdist carries the proto files, so it builds without the repository."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        src = proto_root()
        for p in PROTOS:
            dest = Path(base_dir) / "proto" / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / p, dest)


setup(cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProtos})

"""The tests run the installed package, built with its generated stubs and
versioned with the proto."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

import expresscache
from expresscache.v1 import cache_pb2, cache_pb2_grpc
from harness import REPO_ROOT


def test_the_installed_package_is_tested_not_the_source_tree() -> None:
    installed = Path(expresscache.__file__).resolve()
    assert "site-packages" in installed.parts, installed
    assert not installed.is_relative_to(REPO_ROOT / "client" / "python")


def test_it_ships_generated_stubs_with_typing() -> None:
    package = Path(expresscache.__file__).parent
    for name in ["py.typed", "v1/cache_pb2.pyi", "v1/cache_pb2_grpc.pyi"]:
        assert (package / name).is_file(), name
    assert cache_pb2.DESCRIPTOR.package == "expresscache.v1"
    assert hasattr(cache_pb2_grpc, "CacheServiceStub")
    # Generated from the proto of this checkout: every RPC it declares.
    proto = (REPO_ROOT / "proto" / "expresscache" / "v1" / "cache.proto").read_text()
    methods = cache_pb2.DESCRIPTOR.services_by_name["CacheService"].methods_by_name
    for name in methods:
        assert f"rpc {name}(" in proto
    assert proto.count("  rpc ") == len(methods)


def test_the_version_is_the_proto_and_crates_version() -> None:
    # (tomllib is 3.11+; the package supports 3.10.)
    workspace = (REPO_ROOT / "Cargo.toml").read_text().split("[workspace.package]")[1]
    found = re.search(r'^version\s*=\s*"([^"]+)"', workspace, re.M)
    assert found is not None, "no version in Cargo.toml's [workspace.package]"
    expected = found.group(1)
    assert version("expresscache") == expected
    assert expresscache.__version__ == expected
    assert sys.version_info >= (3, 10)

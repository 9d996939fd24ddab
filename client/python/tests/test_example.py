"""The README's example, run as a user would against the quick start's data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO_ROOT, Moto, Server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "warm.py"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def quickstart_data(moto: Moto) -> None:
    """The quick start's buckets, seeded by its own script (smaller)."""
    subprocess.run(
        [
            sys.executable, str(REPO_ROOT / "deploy" / "local" / "seed.py"),
            "--endpoint", moto.endpoint,
            "--source", "expresscache-demo-source",
            "--directory-bucket", "expresscache-demo--use1-az4--x-s3",
            "--objects", "40",
        ],
        env={**os.environ, "AWS_REGION": "us-east-1",
             "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
        check=True,
    )


def run_example(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env={**os.environ, "EXPRESSCACHE_ENDPOINT": server.endpoint},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_example_warms_then_hits(server: Server, quickstart_data: None) -> None:
    # datasets/2026-11-26/ holds 10 of the 40 shards and 3 notes.
    first = run_example(server)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "SUCCEEDED: 13 copied, 0 hits\n"
    assert re.search(r"^DONE 13 of 13$", first.stderr, re.M), first.stderr

    again = run_example(server, "slurm-job-81234")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "SUCCEEDED: 0 copied, 13 hits\n"


def test_the_readme_shows_the_example_verbatim() -> None:
    code = EXAMPLE.read_text()
    assert f"```python\n{code}```" in README.read_text(), "README.md's example is not examples/warm.py"

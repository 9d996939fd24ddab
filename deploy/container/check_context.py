"""The image's build context (Dockerfile.dockerignore) against the workspace.

`docker build -f deploy/container/Dockerfile .` sends the repository root,
filtered by the ignore file beside the Dockerfile, an allowlist. This
checks, with Docker's matching rules (last matching pattern wins; a pattern
that matches a directory matches everything under it; `!` re-includes):

- every tracked file `cargo build --release --locked` of the workspace
  reads is sent: the members of Cargo.toml and what build.rs names;
- build output, the venv and git's own data are not.

    python deploy/container/check_context.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
IGNORE = Path(__file__).resolve().parent / "Dockerfile.dockerignore"
MUST_STAY_OUT = ["target/release/expresscache", "server/target/x", ".venv/bin/python", ".git/HEAD", ".local/x"]


def patterns() -> list[tuple[bool, str]]:
    out = []
    for line in IGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip("/")))
        out.append((negated, pattern))
    return out


def match(pattern: str, path: str) -> bool:
    """Docker's path match: `*` stays within a segment, `**` spans any."""
    regex = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern):
        if part in ("**", "**/"):
            regex += "(?:.*/)?" if part == "**/" else ".*"
        elif part == "*":
            regex += "[^/]*"
        elif part == "?":
            regex += "[^/]"
        else:
            regex += re.escape(part)
    return re.fullmatch(regex, path) is not None


def sent(path: str, rules: list[tuple[bool, str]]) -> bool:
    parents = [str(p) for p in reversed(PurePosixPath(path).parents) if str(p) != "."] + [path]
    included = True
    for negated, pattern in rules:
        if any(match(pattern, p) for p in parents):
            included = negated
    return included


def needed() -> list[str]:
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    members = manifest["workspace"]["members"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    # What build.rs compiles: the string literals that name repository paths.
    build_inputs = [s for s in re.findall(r'"([\w./-]+)"', (ROOT / "build.rs").read_text())
                    if (ROOT / s).exists()]
    wanted = []
    for f in tracked:
        top = f.split("/", 1)[0]
        if "." in members and (f in ("Cargo.toml", "Cargo.lock", "build.rs") or top == "src"):
            wanted.append(f)
        elif top in members or any(f == b or f.startswith(b.rstrip("/") + "/") for b in build_inputs):
            wanted.append(f)
    return wanted


def main() -> int:
    rules = patterns()
    wanted = needed()
    problems = [f"{f} is needed by the build but not sent" for f in wanted if not sent(f, rules)]
    problems += [f"{f} must stay out of the build context" for f in MUST_STAY_OUT if sent(f, rules)]
    for p in problems:
        print(f"BUILD CONTEXT: {p}", file=sys.stderr)
    if not problems:
        print(f"build context: all {len(wanted)} workspace source files sent; target/, .venv/, .git/ left out")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Runs the README's code blocks, so that none of them rots unseen.

Every fenced block of README.md is claimed by one check below; a block or a
command that no check claims fails the run, so a new one must be run here or
named with the reason it cannot be.

- The quick start is run (deploy/local/quickstart.sh, with the binaries in
  EXPRESSCACHE_BIN_DIR) and every line of the output shown after it that
  does not depend on timing must be among the lines it printed.
- Install: `pip install ./client/python` into a fresh venv, then the SDK
  is imported. (The two `cargo install` lines are release builds of the
  whole dependency tree: they are named below, run on a fresh clone.)
- The commands of "Real AWS in ten steps" and "When something goes wrong"
  that talk to expresscache run as written against a local S3 (moto): the
  server is started with step 5's command line (on free ports in place of
  50051 and 9090), `headnode` is this host,
  the buckets exist with an object under the prefix warmed. The output the
  README shows for the error cases must be what they print, up to
  operation ids and timings.
- What needs a real AWS account (CloudFormation and IAM, the reader's
  subnet and instance, creating or reading a directory bucket through the
  AWS CLI, Mountpoint) is named in NOT_RUN with the reason. The Python
  block runs with boto3's S3 Express session switched off: moto answers
  CreateSession without credentials.
- The layout map: every path it names exists.

Usage: scripts/readme_check.py (EXPRESSCACHE_BIN_DIR: the built binaries;
EXPRESSCACHE_MOTO_SERVER: moto_server). Prints what it ran; exits 1 on the
first difference.
"""

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Commands not run here, by their first words, and why.
NOT_RUN = {
    "cargo install --locked --path server": "a release build of the server and the AWS SDK (about 15 minutes on 2 cores); run on a fresh clone before a release",
    "cargo install --locked --path client": "a release build of the CLI; run on a fresh clone before a release",
    "aws ec2 describe-availability-zones": "the zones of the reader's account (the test venv has no AWS CLI)",
    "aws ec2 describe-subnets": "the reader's subnet (a placeholder id)",
    "aws s3api create-bucket": "a directory bucket in a real zone: the AWS CLI opens an S3 Express session for it, which moto cannot serve",
    "aws cloudformation deploy": "IAM and CloudFormation of a real account (deploy/test.sh lints the template and checks its policy against the code)",
    "aws cloudformation describe-stacks": "the stack of the real account above",
    "aws ec2 associate-iam-instance-profile": "the reader's instance and the stack's profile (placeholders)",
    "aws iam put-role-policy": "the reader's job role (a placeholder)",
    "mkdir -p /mnt/cache && mount-s3": "Mountpoint for Amazon S3 is not installable from this machine's registries",
    "ls /mnt/cache/": "the Mountpoint mount above",
    "aws s3 rm s3://genomics-cache": "a directory bucket through the AWS CLI (S3 Express session)",
    "aws s3api delete-bucket": "the directory bucket of the real account",
    "aws cloudformation delete-stack": "the stack of the real account",
    "for t in records leases operations; do aws dynamodb delete-table": "the stack's tables in the real account",
}

# Expected exit codes of commands that fail on purpose.
EXIT_CODES = {
    "--prefix s3://": 2,
    "--prefix datasets/2026-13-01/": 1,
    "--endpoint http://127.0.0.1:1 ": 5,
}



def fail(msg):
    print(f"readme_check: {msg}", file=sys.stderr)
    sys.exit(1)


def blocks():
    """(language, lines, heading) of every fenced block of the README."""
    out, heading, lang, body = [], "", None, []
    for line in README.read_text().splitlines():
        if lang is None and line.startswith("#"):
            heading = line.lstrip("# ").strip()
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip() or "plain", []
            else:
                out.append((lang, body, heading))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def commands(lines):
    """The `$ ` commands of a console block (with continuation lines), each
    with the output lines shown after it."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            fail(f"console block line outside a command: {line!r}")
        cmd = line[2:]
        while cmd.endswith("\\"):
            i += 1
            cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        shown = []
        while i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        out.append((cmd, shown))
    return out


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z")


def normal(line):
    """A line without what differs between runs: ids, times, rates."""
    line = UUID.sub("ID", line)
    line = STAMP.sub("TIME", line)
    line = re.sub(r"^\+ \S*/expresscache", "+ expresscache", line)
    line = re.sub(r"in \d+(\.\d+)?s$", "in Ts", line)
    if line.startswith("estimated time"):
        line = re.sub(r"\d+ seconds?", "N seconds", line)
    line = re.sub(r"^\[ *\d+\.\d+s\]", "[T]", line)
    return line.rstrip()


def timing(line):
    """A progress line: which moments of a warm get one depends on timing."""
    return line.startswith("[")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc=None, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            fail(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    fail(f"{what} is not listening on {port} after {seconds}s")


def check_quickstart(shown, env):
    print("quick start: deploy/local/quickstart.sh")
    run = subprocess.run(
        ["deploy/local/quickstart.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    printed = run.stdout + run.stderr
    if run.returncode != 0:
        fail(f"the quick start exited with {run.returncode}:\n{printed}")
    got = {normal(l) for l in printed.splitlines()}
    missing = [l for l in shown if l.strip() and not timing(l) and normal(l) not in got]
    if missing:
        fail("the quick start no longer prints these README lines:\n  " + "\n  ".join(missing) + f"\n--- it printed:\n{printed}")
    print(f"  {len(shown)} lines shown in the README, all printed (timings aside)")


def check_install(cmds, env):
    for cmd, _ in cmds:
        if any(cmd.startswith(k) for k in NOT_RUN):
            continue
        if not cmd.startswith("pip install ./client/python"):
            fail(f"an Install command this check does not know: {cmd}")
        with tempfile.TemporaryDirectory() as venv:
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            print(f"install: {cmd} (in a fresh venv)")
            venv_env = dict(env, VIRTUAL_ENV=venv, PATH=os.path.join(venv, "bin") + os.pathsep + env["PATH"])
            subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=venv_env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                [os.path.join(venv, "bin", "python"), "-c", "import expresscache; expresscache.Client"],
                check=True,
            )


class World:
    """moto, the buckets the walkthrough names, and the server it starts."""

    def __init__(self, env, tmp):
        self.tmp = tmp
        port = free_port()
        self.moto = subprocess.Popen(
            [env["EXPRESSCACHE_MOTO_SERVER"], "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, "moto", self.moto)
        self.env = dict(env)
        self.env.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            XDG_DATA_HOME=os.path.join(tmp, "data"),
            PATH=env["EXPRESSCACHE_BIN_DIR"] + os.pathsep + env["PATH"],
        )
        self.server = None
        # The fixed ports the README names, each replaced by a free one so
        # that nothing else listening there can answer for this server.
        self.ports = {50051: free_port(), 9090: free_port()}
        self.seed()

    def port(self, text):
        for fixed, free in self.ports.items():
            text = text.replace(f":{fixed}", f":{free}")
        return text

    def seed(self):
        script = """
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  config=Config(s3={"disable_s3_express_session_auth": True}))
for source, key in (("genomics-raw", "runs/2026-11-26/sample-001.bam"),
                    ("expresscache-demo-source", "datasets/2026-11-26/a")):
    s3.create_bucket(Bucket=source)
    s3.put_object(Bucket=source, Key=key, Body=b"reads")
for d, zone in (("genomics-cache--usw2-az1--x-s3", "usw2-az1"),
                ("expresscache-demo--use1-az4--x-s3", "use1-az4")):
    s3.create_bucket(Bucket=d, CreateBucketConfiguration={
        "Location": {"Type": "AvailabilityZone", "Name": zone},
        "Bucket": {"DataRedundancy": "SingleAvailabilityZone", "Type": "Directory"}})
"""
        subprocess.run([sys.executable, "-c", script, self.env["AWS_ENDPOINT_URL"]], env=self.env, check=True)

    def run(self, cmd, shown):
        if cmd.startswith("export "):
            for assignment in shlex.split(cmd[len("export "):], comments=True):
                name, _, value = assignment.partition("=")
                self.env[name] = self.port(value.replace("headnode", "127.0.0.1"))
            print(f"  ran: {cmd}")
            return
        if cmd.startswith("expresscache-server "):
            log = open(os.path.join(self.tmp, "server.log"), "w")
            argv = [self.port(a) for a in shlex.split(cmd)]
            self.server = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            wait_port(self.ports[50051], "expresscache-server", self.server)
            time.sleep(0.5)
            if self.server.poll() is not None or "listening" not in open(log.name).read():
                fail(f"{cmd} did not start:\n{self.logs()}")
            print(f"  started: {cmd} (ports {self.ports})")
            return
        run = subprocess.run(["bash", "-c", cmd], env=self.env, capture_output=True, text=True, timeout=180)
        expected = next((code for k, code in EXIT_CODES.items() if k in cmd), 0)
        printed = run.stdout + run.stderr
        if run.returncode != expected:
            fail(f"{cmd}\nexited with {run.returncode}, the README implies {expected}:\n{printed}\n{self.logs()}")
        got = {normal(l) for l in printed.splitlines()}
        missing = [l for l in shown if not timing(l) and normal(l) not in got]
        if missing:
            fail(f"{cmd}\ndoes not print what the README shows:\n  " + "\n  ".join(missing) + f"\n--- it printed:\n{printed}")
        print(f"  ran: {cmd} (exit {run.returncode}{', output as shown' if shown else ''})")

    def run_python(self, code):
        """Runs a Python block with boto3 against moto. moto answers
        CreateSession without credentials, so the S3 Express session the
        SDK would open is switched off by its own setting."""
        env = dict(self.env, AWS_S3_DISABLE_EXPRESS_SESSION_AUTH="true")
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            fail(f"the Python block failed:\n{code}\n{run.stderr}")
        print("  ran: the Python block (boto3; S3 Express session auth off for moto)")

    def logs(self):
        path = os.path.join(self.tmp, "server.log")
        return f"--- server log:\n{open(path).read()[-4000:]}" if os.path.exists(path) else ""

    def close(self):
        for p in (self.server, self.moto):
            if p is not None:
                p.terminate()
                p.wait()


def check_layout(lines):
    """Every path the layout map names exists (relative to the folder the
    line's indentation places it in)."""
    roots = [ROOT, ROOT / "server" / "src", ROOT / "client" / "src", ROOT / "server", ROOT / "client"]
    names = 0
    for line in lines:
        if len(line) - len(line.lstrip()) >= 20:
            continue  # the description of the line above, continued
        head = re.split(r"\s{2,}", line.strip())[0]
        for word in head.split():
            word = word.rstrip(",")
            if not re.fullmatch(r"[\w./-]+", word) or word in ("and",):
                continue
            names += 1
            if not any((r / word).exists() for r in roots):
                fail(f"the layout map names {word!r}, which does not exist")
    print(f"layout: {names} paths, all present")


def main():
    env = dict(os.environ)
    for name in ("EXPRESSCACHE_BIN_DIR", "EXPRESSCACHE_MOTO_SERVER"):
        if not env.get(name):
            fail(f"{name} must be set")
    all_blocks = blocks()
    quickstart_output = None
    with tempfile.TemporaryDirectory() as tmp:
        world = None
        try:
            for lang, lines, heading in all_blocks:
                if lang == "console" and lines == ["$ deploy/local/quickstart.sh"]:
                    continue
                if lang == "text" and heading.startswith("Quick start"):
                    quickstart_output = lines
                elif lang == "console" and heading == "Install":
                    check_install(commands(lines), env)
                elif lang == "console":
                    for cmd, shown in commands(lines):
                        reason = next((r for k, r in NOT_RUN.items() if cmd.startswith(k)), None)
                        if reason:
                            print(f"  not run: {cmd[:70]}... ({reason})")
                            continue
                        if not re.match(r"(expresscache(-server)? |export )", cmd):
                            fail(f"a README command neither run nor named in NOT_RUN: {cmd}")
                        if world is None:
                            print(f"walkthrough ({heading}) against a local S3:")
                            world = World(env, tmp)
                        world.run(cmd, shown)
                elif lang == "python" and world is not None:
                    world.run_python("\n".join(lines))
                elif lang == "plain" and heading == "Layout":
                    check_layout(lines)
                else:
                    fail(f"a README block no check claims ({lang}, under {heading!r}): {lines[:2]}")
        finally:
            if world is not None:
                world.close()
    if quickstart_output is None:
        fail("the README shows no quick start output")
    check_quickstart(quickstart_output, env)


if __name__ == "__main__":
    main()

"""The IAM policy of deploy/aws/expresscache.yaml against the server's code.

Finds every AWS SDK request the server's Rust sources send (each
`.send()` of an aws-sdk-s3 or aws-sdk-dynamodb fluent builder, traced back
to the operation that started the chain), maps each operation to the IAM
actions it needs on which kind of resource, and fails when:

- a call has no known mapping (a new call must be mapped here, and the
  policy updated, before this passes);
- the policy lacks an action a call needs, or grants it on the wrong kind
  of resource;
- the policy grants an action no call needs (least privilege both ways).

    python deploy/aws/check_policy.py [--src server/src] [--template deploy/aws/expresscache.yaml]
    python deploy/aws/check_policy.py --self-test
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# Resource kinds a statement's ARNs can be, told apart by classify_resource.
SOURCE_BUCKET = "source bucket"
SOURCE_OBJECT = "source object"
DIRECTORY_BUCKET = "directory bucket"
TABLE = "index table"
TABLE_INDEX = "index table GSI"
KMS_KEY = "KMS key"
WORKING_OBJECT = "working bucket object"
BATCH_JOB = "Batch Operations job"
BATCH_ROLE = "Batch Operations role"

# Every S3 data call to a directory bucket runs in a session that
# s3express:CreateSession grants (read-write); the SDK creates sessions itself.
SESSION = ("s3express:CreateSession", DIRECTORY_BUCKET)

# S3 operation (SDK fluent method) -> (IAM action, resource kind) it needs.
# Which bucket each call addresses is from server/src/store/s3.rs and its
# callers: HeadBucket checks both buckets of a warm, listing is of sources
# only, every write and the size check after a multipart copy are of the
# directory bucket.
S3_ACTIONS: dict[str, list[tuple[str, str]]] = {
    # HeadBucket on a general-purpose bucket needs s3:ListBucket.
    "head_bucket": [("s3:ListBucket", SOURCE_BUCKET), SESSION],
    "list_objects_v2": [("s3:ListBucket", SOURCE_BUCKET)],
    # TaggingDirective=REPLACE: the source's tags are not read.
    "copy_object": [("s3:GetObject", SOURCE_OBJECT), SESSION],
    "upload_part_copy": [("s3:GetObject", SOURCE_OBJECT), SESSION],
    "create_multipart_upload": [SESSION],
    "complete_multipart_upload": [SESSION],
    "abort_multipart_upload": [SESSION],
    # Before a multipart copy: a frozen copier's unfinished uploads are aborted.
    "list_multipart_uploads": [SESSION],
    "head_object": [SESSION],
    "delete_objects": [SESSION],
    # The Batch Operations offload (server/src/batch): the manifest written
    # and the report read in the working bucket (aws-sdk-s3), and the jobs
    # (aws-sdk-s3control, whose IAM actions are s3:*). CreateJob takes no
    # resource-level permission; it passes the role jobs run as.
    "put_object": [("s3:PutObject", WORKING_OBJECT)],
    "get_object": [("s3:GetObject", WORKING_OBJECT)],
    "create_job": [("s3:CreateJob", BATCH_JOB), ("iam:PassRole", BATCH_ROLE)],
    "describe_job": [("s3:DescribeJob", BATCH_JOB)],
    "update_job_status": [("s3:UpdateJobStatus", BATCH_JOB)],
}

# DynamoDB operation -> IAM actions, on the index tables. Query also reads
# the GSIs (by_expiry, by_status). TransactWriteItems is no IAM action: each
# item of a transaction is authorized as its own kind (see TRANSACT_ITEMS).
DYNAMODB_ACTIONS: dict[str, list[tuple[str, str]]] = {
    "describe_table": [("dynamodb:DescribeTable", TABLE)],  # check_tables at start
    "get_item": [("dynamodb:GetItem", TABLE)],
    "batch_get_item": [("dynamodb:BatchGetItem", TABLE)],
    "query": [("dynamodb:Query", TABLE), ("dynamodb:Query", TABLE_INDEX)],
    "put_item": [("dynamodb:PutItem", TABLE)],
    "update_item": [("dynamodb:UpdateItem", TABLE)],
    "delete_item": [("dynamodb:DeleteItem", TABLE)],
    "transact_write_items": [],  # the actions of its items, below
}
TRANSACT_ITEMS = {
    "put": "dynamodb:PutItem",
    "update": "dynamodb:UpdateItem",
    "delete": "dynamodb:DeleteItem",
    "condition_check": "dynamodb:ConditionCheckItem",
}

# Calls only `expresscache-server index create` makes. The stack creates the
# tables itself, so the server's role must NOT be able to: these may appear
# only where create_tables lives, and never in the policy.
ADMIN_ONLY = {
    "create_table",
    "describe_time_to_live",
    "update_time_to_live",
    "describe_continuous_backups",
    "update_continuous_backups",
}
ADMIN_FILE = "index/dynamo/tables.rs"

# Granted without a call in the code, and why.
EXTRA_GRANTS = {
    # SSE-KMS sources: S3 decrypts with the caller's permission (optional
    # statement, only when SourceKmsKeyArns is given).
    ("kms:Decrypt", KMS_KEY),
}

# Test code, compiled only with the testing feature (never in
# the release binary); lib.rs must keep it gated for this to hold.
EXCLUDED_DIRS = ("testing/",)
# Gated by the feature (a unit-test build, `cfg(test)`, is never the server).
GATE = re.compile(
    r'#\[cfg\((?:feature\s*=\s*"testing"|any\(\s*test\s*,\s*feature\s*=\s*"testing"\s*\))\)\]'
    r'\s*pub\s+mod\s+testing\s*;'
)


@dataclass(frozen=True)
class Call:
    file: str
    line: int
    sdk: str  # "s3" or "dynamodb"
    op: str | None  # None: could not be traced to an operation


# --- Rust source scanning -------------------------------------------------


def blank(text: str, start: int, end: int) -> str:
    """Replaces text[start:end] with spaces, keeping newlines (and so offsets)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def strip_rust(text: str) -> str:
    """Comments, string and char literals blanked out, offsets unchanged."""
    pattern = re.compile(
        r'//[^\n]*|/\*.*?\*/|r(#*)".*?"\1|b?"(?:\\.|[^"\\])*"|b?\'(?:\\.|[^\'\\])\'',
        re.S,
    )
    out = text
    for m in pattern.finditer(text):
        out = blank(out, m.start(), m.end())
    return out


def matching_brace(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced braces")


def strip_test_modules(text: str) -> str:
    """Blanks `#[cfg(test)] mod x { ... }`: unit tests are not the server."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
        if not m:
            return text
        text = blank(text, m.start(), matching_brace(text, m.end() - 1) + 1)


def skip_ws_back(text: str, i: int) -> int:
    while i >= 0 and text[i].isspace():
        i -= 1
    return i


def matching_paren_back(text: str, close_at: int) -> int:
    depth = 0
    for i in range(close_at, -1, -1):
        if text[i] == ")":
            depth += 1
        elif text[i] == "(":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses")


def ident_back(text: str, end: int) -> tuple[str, int]:
    """The identifier ending at text[end] and the index before it."""
    i = end
    while i >= 0 and (text[i].isalnum() or text[i] == "_"):
        i -= 1
    return text[i + 1 : end + 1], i


def first_call(text: str, start: int) -> str | None:
    """The first `.name(` call of the expression starting at `start`."""
    m = re.compile(r"[\s\w.&*:]*?\.\s*(\w+)\s*\(").match(text, start)
    return m.group(1) if m else None


def chain_op(text: str, send_dot: int) -> str | None:
    """The SDK operation a `.send()` at text[send_dot] sends.

    Walks the method chain back from `.send()`: `receiver.op().a(..).b(..)
    .send()`. The operation is the first call of the chain, made on a field
    (`self.client.op()`) or a client variable. A chain that starts at a
    variable holding a builder (`req.a(..).send()`) is traced to its
    `let req = ...` instead.
    """
    calls: list[str] = []
    i = skip_ws_back(text, send_dot - 1)
    while i >= 0:
        if text[i] == ")":
            open_at = matching_paren_back(text, i)
            j = skip_ws_back(text, open_at - 1)
            # Generic arguments of a turbofish: `.op::<T>()`.
            if text[j] == ">":
                depth = 0
                while j >= 0:
                    depth += {">": 1, "<": -1}.get(text[j], 0)
                    if depth == 0:
                        break
                    j -= 1
                j = skip_ws_back(text, j - 1)
                if text[j - 1 : j + 1] == "::":
                    j = skip_ws_back(text, j - 2)
            name, j = ident_back(text, j)
            if not name:
                return None
            calls.append(name)
            j = skip_ws_back(text, j)
            if j >= 0 and text[j] == ".":
                i = skip_ws_back(text, j - 1)
                continue
            return None  # a free function call: not a builder chain
        name, j = ident_back(text, i)
        if not name:
            return None
        j = skip_ws_back(text, j)
        if (j >= 0 and text[j] == ".") or name == "self":
            # `self.client.op()...`: the chain's first call is the operation.
            return calls[-1] if calls else None
        # A variable: a client (`client.op()...`) or a builder made earlier.
        let = None
        for m in re.finditer(r"\blet\s+(?:mut\s+)?" + re.escape(name) + r"\s*(?::[^=]*)?=", text[:i]):
            let = m
        if let is None:
            return calls[-1] if calls else None
        traced = first_call(text, let.end())
        return traced
    return None


def sdk_of(text: str) -> str | None:
    s3 = "aws_sdk_s3" in text
    ddb = "aws_sdk_dynamodb" in text
    if s3 and ddb:
        return "both"
    return "s3" if s3 else "dynamodb" if ddb else None


def scan(src: Path) -> tuple[list[Call], set[str], list[str]]:
    """Every SDK call under src, the transaction item kinds, and problems."""
    calls: list[Call] = []
    items: set[str] = set()
    problems: list[str] = []
    lib = src / "lib.rs"
    if lib.exists() and not GATE.search(lib.read_text()):
        problems.append(
            f"{lib}: `pub mod testing` is no longer gated by the testing feature; "
            "its SDK calls would be in the server and must be checked too"
        )
    for path in sorted(src.rglob("*.rs")):
        rel = path.relative_to(src).as_posix()
        if rel.startswith(EXCLUDED_DIRS):
            continue
        raw = path.read_text()
        sdk = sdk_of(raw)
        if sdk is None:
            continue
        text = strip_test_modules(strip_rust(raw))
        for m in re.finditer(r"TransactWriteItem::builder\(\)\s*\.\s*(\w+)\s*\(", text):
            items.add(m.group(1))
        for m in re.finditer(r"\.\s*send\s*\(\s*\)", text):
            op = chain_op(text, m.start())
            line = text.count("\n", 0, m.start()) + 1
            if sdk == "both":
                kind = "s3" if op in S3_ACTIONS else "dynamodb"
            else:
                kind = sdk
            calls.append(Call(rel, line, kind, op))
    return calls, items, problems


# --- The template's policy ------------------------------------------------


class Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref x -> {"Ref": x})."""


def _tag(loader: Loader, suffix: str, node: yaml.Node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


Loader.add_multi_constructor("!", _tag)


def strings_in(value) -> list[str]:
    """Every string in a CloudFormation expression, Refs as `${Name}`."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            return ["${" + value["Ref"] + "}"]
        if set(value) == {"Fn::GetAtt"}:
            return ["${" + ".".join(value["Fn::GetAtt"]) + "}"]
        return [s for v in value.values() for s in strings_in(v)]
    return []


def classify_resource(template: dict, expr) -> set[str]:
    """The kinds of resource an expression names, from its ARNs or the
    parameters and resources it refers to."""
    kinds = set()
    resources = template.get("Resources", {})
    for s in strings_in(expr):
        for ref in re.findall(r"\$\{([\w:.]+)\}", s) or [s]:
            base = ref.split(".")[0]
            if ref == "BatchWorkingBucket":
                kinds.add(WORKING_OBJECT)
            elif s == "*" or ":job/" in s:
                kinds.add(BATCH_JOB)
            elif ref == "BatchRole.Arn" or (":iam::" in s and ":role/" in s):
                kinds.add(BATCH_ROLE)
            elif ref == "SourceBucketArns" or re.search(r"arn:[^:]*:s3:::[^/]+$", s):
                kinds.add(SOURCE_BUCKET)
            elif ref == "SourceObjectArns" or re.search(r"arn:[^:]*:s3:::.+/", s):
                kinds.add(SOURCE_OBJECT)
            elif ref == "DirectoryBucketArns" or ":s3express:" in s:
                kinds.add(DIRECTORY_BUCKET)
            elif ref == "SourceKmsKeyArns" or ":kms:" in s:
                kinds.add(KMS_KEY)
            elif resources.get(base, {}).get("Type") == "AWS::DynamoDB::Table":
                kinds.add(TABLE_INDEX if "/index/" in s else TABLE)
    return kinds


def statements(doc) -> list[dict]:
    """Policy statements, the true branch of each `Fn::If`."""
    out = []
    for st in doc.get("Statement", []):
        if isinstance(st, dict) and "Fn::If" in st:
            st = st["Fn::If"][1]
        if isinstance(st, dict) and st.get("Effect") == "Allow":
            out.append(st)
    return out


def granted(template: dict, policy_id: str) -> set[tuple[str, str]]:
    """(action, resource kind) pairs the policy allows."""
    policy = template["Resources"][policy_id]["Properties"]["PolicyDocument"]
    pairs = set()
    for st in statements(policy):
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for kind in classify_resource(template, st["Resource"]):
            for action in actions:
                pairs.add((action, kind))
    return pairs


# --- The check ------------------------------------------------------------


def needed(calls: list[Call], items: set[str], problems: list[str]) -> dict[tuple[str, str], list[str]]:
    """(action, kind) -> where in the code it is needed; unmapped calls
    are added to problems."""
    need: dict[tuple[str, str], list[str]] = {}
    for c in calls:
        where = f"{c.file}:{c.line} {c.op or '?'}"
        table = S3_ACTIONS if c.sdk == "s3" else DYNAMODB_ACTIONS
        if c.op in ADMIN_ONLY:
            if c.file != ADMIN_FILE:
                problems.append(
                    f"{where}: {c.op} is table administration, reached only by `index create` "
                    f"in {ADMIN_FILE}; now called from {c.file}: the server's role would need it"
                )
            continue
        if c.op is None:
            problems.append(f"{where}: a .send() this check cannot trace to an SDK operation")
            continue
        if c.op not in table:
            problems.append(
                f"{where}: aws-sdk-{c.sdk} operation {c.op} has no IAM mapping in "
                f"deploy/aws/check_policy.py: map it, then grant it in deploy/aws/expresscache.yaml"
            )
            continue
        pairs = list(table[c.op])
        if c.op == "transact_write_items":
            for kind in sorted(items):
                if kind not in TRANSACT_ITEMS:
                    problems.append(f"{where}: transaction item kind {kind} has no IAM mapping")
                else:
                    pairs.append((TRANSACT_ITEMS[kind], TABLE))
        for pair in pairs:
            need.setdefault(pair, []).append(where)
    return need


def check(src: Path, template_path: Path, policy_id: str = "ServerPolicy") -> list[str]:
    calls, items, problems = scan(src)
    if not calls:
        problems.append(f"no AWS SDK call found under {src}: is this the server's source?")
    need = needed(calls, items, problems)
    template = yaml.load(template_path.read_text(), Loader=Loader)
    have = granted(template, policy_id)
    for (action, kind), where in sorted(need.items()):
        if (action, kind) not in have:
            problems.append(
                f"the policy lacks {action} on the {kind} (needed by {', '.join(sorted(set(where)))})"
            )
    for action, kind in sorted(have - set(need) - EXTRA_GRANTS):
        problems.append(f"the policy grants {action} on the {kind}, which no call of the server needs")
    if not problems:
        ops = sorted({f"{c.sdk}:{c.op}" for c in calls})
        print(f"policy matches the code: {len(calls)} SDK calls ({', '.join(ops)}) need "
              f"{len(need)} grants, all in {template_path.name} and nothing more")
    return problems


# --- Self-test: the check catches what it is for -------------------------

SELF_TEST_S3 = """
use aws_sdk_s3::Client;
struct S { client: Client }
impl S {
    async fn a(&self) { self.client.head_bucket().bucket("x").send().await; }
    async fn b(&self) {
        // self.client.put_bucket_policy().send() in a comment is no call
        let s = ".send()";
        self.client
            .copy_object()
            .copy_source(format!("{}/{}", "a", "b"))
            .send()
            .await;
    }
    async fn c(&self) {
        let mut req = self.client.list_objects_v2().bucket("b");
        req = req.prefix("p/");
        req.max_keys(3).send().await;
    }
}
#[cfg(test)]
mod tests {
    fn t(c: &aws_sdk_s3::Client) { c.delete_bucket().send(); }
}
"""


def self_test() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "store.rs").write_text(SELF_TEST_S3)
        calls, _, problems = scan(src)
        ops = sorted(c.op for c in calls)
        assert ops == ["copy_object", "head_bucket", "list_objects_v2"], ops
        assert not problems, problems
        # A new operation has no mapping: the check must fail and name it.
        (src / "store.rs").write_text(SELF_TEST_S3.replace("head_bucket()", "put_bucket_acl()"))
        calls, items, problems = scan(src)
        need = needed(calls, items, problems)
        assert any("put_bucket_acl has no IAM mapping" in p for p in problems), problems
        assert ("s3:ListBucket", SOURCE_BUCKET) in need
        # Table administration outside tables.rs is refused.
        (src / "store.rs").write_text(SELF_TEST_S3.replace("head_bucket()", "create_table()"))
        calls, items, problems = scan(src)
        needed(calls, items, problems)
        assert any("table administration" in p for p in problems), problems
        # The policy side, on the real code and template: a missing grant and
        # a grant on the wrong kind of resource are both caught.
        here = Path(__file__).resolve().parent
        real_src, real = here.parent.parent / "server" / "src", (here / "expresscache.yaml").read_text()
        for old, new, expect in [
            ("- dynamodb:ConditionCheckItem", "- dynamodb:Scan", "lacks dynamodb:ConditionCheckItem"),
            ("Action: s3express:CreateSession", "Action: s3:GetObject", "lacks s3express:CreateSession"),
        ]:
            assert old in real, old
            mutated = src / "mutated.yaml"
            mutated.write_text(real.replace(old, new))
            problems = check(real_src, mutated)
            assert any(expect in p for p in problems), (expect, problems)
    print("self-test passed: traced chains, skipped comments/strings/tests, caught an unmapped call, "
          "an admin call, a missing grant and a grant on the wrong resource")


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=here.parent.parent / "server" / "src")
    ap.add_argument("--template", type=Path, default=here / "expresscache.yaml")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    problems = check(args.src, args.template)
    for p in problems:
        print(f"POLICY DRIFT: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""A fake S3 Control endpoint for tests: the CreateJob, DescribeJob and
UpdateJobStatus wire format of S3 Batch Operations (which moto does not
implement), running S3PutObjectCopy jobs for real against an S3 endpoint
(moto) and writing completion reports in the real format.

    python fake_s3control.py PORT S3_ENDPOINT

Knobs, by environment:
  FAKE_S3CONTROL_TASK_DELAY_MS  pause before each task (a job that runs a
                                while, to cancel or restart under it)
  FAKE_S3CONTROL_FAIL_KEYS      comma-separated source keys whose copy
                                fails (TaskStatus failed, 403 AccessDenied)
  FAKE_S3CONTROL_DENY_CREATE    "1": CreateJob answers 403 AccessDenied
  FAKE_S3CONTROL_FAIL_JOB       "1": every job ends Failed (no tasks run)
  FAKE_S3CONTROL_THROTTLE_CREATE  N: the first N CreateJob calls answer 503
                                SlowDown (throttled)
  FAKE_S3CONTROL_HANG_DESCRIBE  N: the first N DescribeJob calls never
                                answer (held 60 s)
GET /_fake/stats answers {"create_job_calls": N, "jobs": {...}} as JSON.
"""

import csv
import datetime
import io
import json
import os
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3

NS = "http://awss3control.amazonaws.com/doc/2018-08-20/"
PORT = int(sys.argv[1])
S3 = boto3.client(
    "s3",
    endpoint_url=sys.argv[2],
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
DELAY = int(os.environ.get("FAKE_S3CONTROL_TASK_DELAY_MS", "0")) / 1000.0
FAIL_KEYS = {k for k in os.environ.get("FAKE_S3CONTROL_FAIL_KEYS", "").split(",") if k}

LOCK = threading.Lock()
JOBS = {}  # id -> dict
TOKENS = {}  # client request token -> id
CREATE_CALLS = [0]
DESCRIBE_CALLS = [0]


def text(el, path):
    """The text of the first element at `path` (namespace-agnostic)."""
    for e in el.iter():
        if e.tag.split("}")[-1] == path:
            return e.text or ""
    return ""


def bucket_of_arn(arn):
    # arn:aws:s3:::bucket[/key] or arn:aws:s3express:region:acct:bucket/NAME
    rest = arn.split(":", 5)[5]
    if arn.startswith("arn:aws:s3express:"):
        return rest.split("/", 1)[1]
    return rest.split("/", 1)[0]


def key_of_arn(arn):
    return arn.split(":", 5)[5].split("/", 1)[1]


class TaskError(Exception):
    def __init__(self, code, status, message):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def run_job(job_id):
    job = JOBS[job_id]
    if os.environ.get("FAKE_S3CONTROL_FAIL_JOB") == "1":
        with LOCK:
            job["status"] = "Failed"
            job["failure"] = ("ManifestNotFound", "the fake was told to fail every job")
        return
    body = S3.get_object(Bucket=bucket_of_arn(job["manifest"]), Key=key_of_arn(job["manifest"]))
    lines = list(csv.reader(io.StringIO(body["Body"].read().decode())))
    with LOCK:
        job["total"] = len(lines)
        # A cancel that came while the manifest was read stands (S3 never
        # loses one): the loop below ends the job at once.
        if job["status"] not in ("Cancelling", "Cancelled"):
            job["status"] = "Active"
    failed_rows = []
    for bucket, enc_key in lines:
        with LOCK:
            if job["status"] in ("Cancelling", "Cancelled"):
                job["status"] = "Cancelled"
                break
        if DELAY:
            time.sleep(DELAY)
        key = urllib.parse.unquote_plus(enc_key)
        target_key = job["prefix"] + key
        try:
            if key in FAIL_KEYS:
                raise TaskError("AccessDenied", "403", "the fake was told to fail this key")
            if job["unmodified_since"]:
                # S3 copies only a source not modified since the constraint.
                since = datetime.datetime.fromisoformat(job["unmodified_since"].replace("Z", "+00:00"))
                modified = S3.head_object(Bucket=bucket, Key=key)["LastModified"]
                if modified.replace(microsecond=0) > since:
                    raise TaskError("PreconditionFailed", "412", "modified since the constraint")
            S3.copy_object(
                Bucket=job["target"],
                Key=target_key,
                CopySource={"Bucket": bucket, "Key": key},
            )
            with LOCK:
                job["succeeded"] += 1
        except TaskError as e:
            with LOCK:
                job["failed"] += 1
            failed_rows.append([bucket, enc_key, "", "failed", e.code, e.status, e.message])
        except Exception as e:  # noqa: BLE001 - a failed task, as S3 reports it
            with LOCK:
                job["failed"] += 1
            failed_rows.append([bucket, enc_key, "", "failed", "InternalError", "500", str(e)])
    # The completion report: results CSV of the failed tasks, and the
    # manifest.json that names it, under PREFIX/job-ID/.
    base = f"{job['report_prefix'].rstrip('/')}/job-{job_id}"
    results_key = f"{base}/results/{uuid.uuid4()}.csv"
    out = io.StringIO()
    csv.writer(out).writerows(failed_rows)
    report_bucket = bucket_of_arn(job["report_bucket"])
    S3.put_object(Bucket=report_bucket, Key=results_key, Body=out.getvalue().encode())
    S3.put_object(
        Bucket=report_bucket,
        Key=f"{base}/manifest.json",
        Body=json.dumps(
            {
                "Format": "Report_CSV_20180820",
                "ReportCreationDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "Results": [
                    {
                        "TaskExecutionStatus": "failed",
                        "Bucket": report_bucket,
                        "MD5Checksum": "",
                        "Key": results_key,
                    }
                ],
                "ReportSchema": "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage",
            }
        ).encode(),
    )
    with LOCK:
        if job["status"] != "Cancelled":
            job["status"] = "Complete"


def xml_response(handler, status, root_name, children):
    root = ET.Element(root_name, xmlns=NS)
    for name, value in children:
        if isinstance(value, ET.Element):
            root.append(value)
        else:
            ET.SubElement(root, name).text = str(value)
    body = b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root)
    handler.send_response(status)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def error(handler, status, code, message):
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error><RequestId>fake</RequestId></ErrorResponse>"
    ).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        path = urllib.parse.urlparse(self.path).path
        if path == "/_fake/stats":
            with LOCK:
                body = json.dumps(
                    {"create_job_calls": CREATE_CALLS[0], "describe_job_calls": DESCRIBE_CALLS[0], "jobs": JOBS}
                ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path.startswith("/v20180820/jobs/"):
            job_id = path.rsplit("/", 1)[1]
            with LOCK:
                DESCRIBE_CALLS[0] += 1
                hang = DESCRIBE_CALLS[0] <= int(os.environ.get("FAKE_S3CONTROL_HANG_DESCRIBE", "0"))
            if hang:
                time.sleep(60)
                return
            with LOCK:
                job = JOBS.get(job_id)
                if job is None:
                    return error(self, 404, "NoSuchJob", f"job {job_id} not found")
                job_el = ET.Element("Job")
                ET.SubElement(job_el, "JobId").text = job_id
                ET.SubElement(job_el, "Status").text = job["status"]
                ET.SubElement(job_el, "CreationTime").text = job["created"]
                if job["unmodified_since"]:
                    op = ET.SubElement(ET.SubElement(job_el, "Operation"), "S3PutObjectCopy")
                    ET.SubElement(op, "UnModifiedSinceConstraint").text = job["unmodified_since"]
                summary = ET.SubElement(job_el, "ProgressSummary")
                ET.SubElement(summary, "TotalNumberOfTasks").text = str(job["total"])
                ET.SubElement(summary, "NumberOfTasksSucceeded").text = str(job["succeeded"])
                ET.SubElement(summary, "NumberOfTasksFailed").text = str(job["failed"])
                if job.get("failure"):
                    reasons = ET.SubElement(job_el, "FailureReasons")
                    reason = ET.SubElement(reasons, "member")
                    ET.SubElement(reason, "FailureCode").text = job["failure"][0]
                    ET.SubElement(reason, "FailureReason").text = job["failure"][1]
            return xml_response(self, 200, "DescribeJobResult", [("Job", job_el)])
        return error(self, 404, "NotFound", path)

    def do_POST(self):
        parsed = urllib.parse.urlparse(self.path)
        path = parsed.path
        body = self.body()
        if path == "/v20180820/jobs":
            with LOCK:
                CREATE_CALLS[0] += 1
            if CREATE_CALLS[0] <= int(os.environ.get("FAKE_S3CONTROL_THROTTLE_CREATE", "0")):
                return error(self, 503, "SlowDown", "the fake throttles CreateJob")
            if os.environ.get("FAKE_S3CONTROL_DENY_CREATE") == "1":
                return error(self, 403, "AccessDenied", "the fake denies CreateJob")
            if not self.headers.get("x-amz-account-id"):
                return error(self, 400, "InvalidRequest", "x-amz-account-id is missing")
            req = ET.fromstring(body)
            token = text(req, "ClientRequestToken")
            with LOCK:
                if token in TOKENS:
                    return xml_response(self, 200, "CreateJobResult", [("JobId", TOKENS[token])])
                job_id = str(uuid.uuid4())
                TOKENS[token] = job_id
                JOBS[job_id] = {
                    "created": datetime.datetime.now(datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ"
                    ),
                    "status": "Preparing",
                    "total": 0,
                    "succeeded": 0,
                    "failed": 0,
                    "manifest": text(req, "ObjectArn"),
                    "manifest_etag": text(req, "ETag"),
                    "target": bucket_of_arn(text(req, "TargetResource")),
                    "prefix": text(req, "TargetKeyPrefix"),
                    "report_bucket": text(req, "Bucket"),
                    "report_prefix": text(req, "Prefix"),
                    "report_scope": text(req, "ReportScope"),
                    "role": text(req, "RoleArn"),
                    "confirmation_required": text(req, "ConfirmationRequired"),
                    "unmodified_since": text(req, "UnModifiedSinceConstraint"),
                    "new_object_tagging": "NewObjectTagging" in body.decode(),
                    "token": token,
                }
            threading.Thread(target=run_job, args=(job_id,), daemon=True).start()
            return xml_response(self, 200, "CreateJobResult", [("JobId", job_id)])
        if path.startswith("/v20180820/jobs/") and path.endswith("/status"):
            job_id = path.split("/")[3]
            query = urllib.parse.parse_qs(parsed.query)
            wanted = query.get("requestedJobStatus", [""])[0]
            with LOCK:
                job = JOBS.get(job_id)
                if job is None:
                    return error(self, 404, "NoSuchJob", f"job {job_id} not found")
                if wanted == "Cancelled" and job["status"] not in ("Complete", "Failed"):
                    job["status"] = "Cancelling"
                status = job["status"]
            return xml_response(
                self, 200, "UpdateJobStatusResult", [("JobId", job_id), ("Status", status)]
            )
        return error(self, 404, "NotFound", path)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()

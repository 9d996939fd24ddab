//! What a warm needs to hand its copies to an S3 Batch Operations job: the
//! configuration (working bucket, role, account, region, threshold), the
//! manifest it writes and the completion report it reads back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::control::{JobControl, JobError};

/// A server's S3 Batch Operations offload.
#[derive(Debug)]
pub struct Offload {
    pub jobs: Arc<dyn JobControl>,
    /// For the working bucket: the manifest and the report.
    pub s3: aws_sdk_s3::Client,
    /// General-purpose bucket for manifests and reports.
    pub working_bucket: String,
    /// The role Batch Operations assumes.
    pub role_arn: String,
    /// The account of the role (and of the jobs).
    pub account_id: String,
    /// The region of the directory buckets (their ARNs name it).
    pub region: String,
    /// Warms with more objects to copy than this go through a job; `None`:
    /// only warms that ask for it.
    pub threshold: Option<u64>,
    /// First and longest pause between DescribeJob calls.
    pub poll: (Duration, Duration),
}

impl std::fmt::Debug for dyn JobControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobControl")
    }
}

/// The account in an IAM role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).
pub fn account_of_role(role_arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = role_arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "iam", "", account, role]
            if account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && role.starts_with("role/") =>
        {
            Ok((*account).to_owned())
        }
        _ => Err(format!(
            "--batch-role-arn {role_arn:?}: expected arn:aws:iam::ACCOUNT:role/NAME"
        )),
    }
}

/// A key as a Batch Operations CSV manifest carries it: URL-encoded (every
/// byte but the unreserved ones).
pub fn url_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A URL-encoded key back (`+` is a space, as in form encoding).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn s3_error(what: &str, e: impl std::fmt::Display) -> JobError {
    JobError::Unavailable(format!("{what}: {e}"))
}

impl Offload {
    /// Writes the CSV manifest of `rows` (source bucket, source key) at
    /// `key` in the working bucket; its ARN and ETag.
    pub async fn put_manifest(
        &self,
        key: &str,
        rows: &[(String, String)],
    ) -> Result<(String, String), JobError> {
        let mut csv = String::new();
        for (bucket, k) in rows {
            csv.push_str(bucket);
            csv.push(',');
            csv.push_str(&url_encode(k));
            csv.push('\n');
        }
        let out = self
            .s3
            .put_object()
            .bucket(&self.working_bucket)
            .key(key)
            .content_type("text/csv")
            .body(csv.into_bytes().into())
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    "writing the manifest",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let etag = out.e_tag().unwrap_or_default().trim_matches('"').to_owned();
        Ok((format!("arn:aws:s3:::{}/{key}", self.working_bucket), etag))
    }

    /// The failed tasks of job `job_id` from its completion report under
    /// `report_prefix`: source key → (error code, message).
    ///
    /// A job cancelled (or failed) before its first task writes no report:
    /// then there are none.
    pub async fn failed_tasks(
        &self,
        report_prefix: &str,
        job_id: &str,
        state: super::JobState,
    ) -> Result<HashMap<String, (String, String)>, JobError> {
        let manifest_key = format!(
            "{}/job-{job_id}/manifest.json",
            report_prefix.trim_end_matches('/')
        );
        let manifest = match self.read(&manifest_key).await {
            Err(JobError::Refused { code, .. })
                if code == "NoSuchKey" && state != super::JobState::Complete =>
            {
                return Ok(HashMap::new());
            }
            r => r?,
        };
        let doc: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| s3_error("reading the job report's manifest.json", e))?;
        let mut failed = HashMap::new();
        for result in doc["Results"].as_array().into_iter().flatten() {
            let Some(key) = result["Key"].as_str() else {
                continue;
            };
            let body = self.read(key).await?;
            for line in String::from_utf8_lossy(&body).lines() {
                // Bucket, Key, VersionId, TaskStatus, ErrorCode,
                // HTTPStatusCode, ResultMessage (which may hold commas).
                let cols: Vec<&str> = line.splitn(7, ',').collect();
                if cols.len() < 5 || cols[3] != "failed" {
                    continue;
                }
                failed.insert(
                    url_decode(cols[1]),
                    (
                        cols[4].to_owned(),
                        cols.get(6).copied().unwrap_or_default().to_owned(),
                    ),
                );
            }
        }
        Ok(failed)
    }

    /// An object of the working bucket, retried a few times while S3 does
    /// not answer; a missing one is `Refused` with code `NoSuchKey`.
    async fn read(&self, key: &str) -> Result<Vec<u8>, JobError> {
        let backoff =
            expresscache::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        let mut tries = 0;
        let out = loop {
            tries += 1;
            match self
                .s3
                .get_object()
                .bucket(&self.working_bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => break out,
                Err(e) => {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    if e.as_service_error().is_some_and(|se| se.is_no_such_key()) {
                        return Err(JobError::Refused {
                            code: "NoSuchKey".into(),
                            message: format!("{key} is not in the working bucket"),
                        });
                    }
                    if tries >= 4 || e.code() == Some("AccessDenied") {
                        return Err(s3_error(
                            "reading the job report",
                            aws_sdk_s3::error::DisplayErrorContext(e),
                        ));
                    }
                    tokio::time::sleep(backoff.ceiling(tries)).await;
                }
            }
        };
        Ok(out
            .body
            .collect()
            .await
            .map_err(|e| s3_error("reading the job report", e))?
            .into_bytes()
            .to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_the_manifest_encoding() {
        for key in ["d/a b", "d/ü+%,x", "plain/key.bin", "d/\u{1F600}"] {
            assert_eq!(url_decode(&url_encode(key)), key);
        }
        assert_eq!(url_encode("a b,c"), "a%20b%2Cc");
        assert_eq!(url_decode("a+b"), "a b");
    }

    #[test]
    fn the_account_comes_from_the_role() {
        assert_eq!(
            account_of_role("arn:aws:iam::123456789012:role/batch").unwrap(),
            "123456789012"
        );
        assert!(account_of_role("arn:aws:iam::12:role/x").is_err());
        assert!(account_of_role("arn:aws:s3:::bucket").is_err());
    }
}

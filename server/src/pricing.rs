//! What a warm costs: a dry run's plan priced two ways, by this server's
//! copy engine and by an S3 Batch Operations job, and the storage of what
//! it keeps for its TTL, from a price table that the operator may override
//! (`--price-table FILE`, TOML).

use std::path::Path;

use serde::Deserialize;

/// Prices in US dollars. Defaults: the AWS price list for us-east-1
/// (aws.amazon.com/s3/pricing: S3 Standard requests; S3 Express One Zone
/// requests, uploads and storage as changed on 2025-04-10, storage cut
/// from $0.16 to $0.11 per GB-month; S3 Batch Operations).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceTable {
    /// Where the prices come from (shown with every estimate).
    pub source: String,
    /// LIST requests on the general-purpose source bucket, per 1,000.
    pub source_list_per_1000: f64,
    /// PUT-class requests on a general-purpose bucket (the Batch manifest
    /// and completion report), per 1,000.
    pub standard_put_per_1000: f64,
    /// PUT-class requests on the directory bucket (CopyObject,
    /// UploadPartCopy, multipart create and complete), per 1,000.
    pub express_put_per_1000: f64,
    /// S3 Express One Zone upload, per GB of each request's size above
    /// [`EXPRESS_FREE_BYTES`].
    pub express_upload_per_gb: f64,
    /// S3 Batch Operations, per job.
    pub batch_per_job: f64,
    /// S3 Batch Operations, per million objects processed.
    pub batch_per_million_objects: f64,
    /// S3 Express One Zone storage, per GB-month (a GB of 2^30 bytes kept
    /// for [`HOURS_PER_MONTH`] hours, as AWS bills storage).
    pub express_storage_per_gb_month: f64,
}

/// The hours of a billing month, on average (365 x 24 / 12): AWS bills
/// storage by byte-hours over the hours of each calendar month.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// A GB as AWS bills storage: 2^30 bytes.
const STORAGE_GB: f64 = 1_073_741_824.0;

/// The part of each request to the directory bucket that uploads free.
pub const EXPRESS_FREE_BYTES: u64 = 512 * 1024;

const GB: f64 = 1_000_000_000.0;

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            source: "AWS price list, us-east-1 (aws.amazon.com/s3/pricing): S3 Standard \
                     requests; S3 Express One Zone requests, uploads and storage as of \
                     2025-04-10; S3 Batch Operations (override with --price-table)"
                .into(),
            source_list_per_1000: 0.005,
            standard_put_per_1000: 0.005,
            express_put_per_1000: 0.001_13,
            express_upload_per_gb: 0.003_2,
            batch_per_job: 0.25,
            batch_per_million_objects: 1.0,
            express_storage_per_gb_month: 0.11,
        }
    }
}

impl PriceTable {
    /// Reads a table from a TOML file; fields it leaves out keep their
    /// defaults.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the price table {}: {e}", path.display()))?;
        let table: Self =
            toml::from_str(&text).map_err(|e| format!("price table {}: {e}", path.display()))?;
        let prices = [
            table.source_list_per_1000,
            table.standard_put_per_1000,
            table.express_put_per_1000,
            table.express_upload_per_gb,
            table.batch_per_job,
            table.batch_per_million_objects,
            table.express_storage_per_gb_month,
        ];
        if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(format!(
                "price table {}: every price must be a finite number >= 0",
                path.display()
            ));
        }
        Ok(table)
    }
}

/// The requests and bytes a warm's copies take, one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyWork {
    /// PUT-class requests on the directory bucket.
    pub requests: u64,
    /// Bytes above [`EXPRESS_FREE_BYTES`] per request, summed.
    pub billable_bytes: u64,
}

impl CopyWork {
    pub fn add(&mut self, other: Self) {
        self.requests += other.requests;
        self.billable_bytes += other.billable_bytes;
    }
}

/// The copy work of one object of `size` bytes copied in `part`-sized
/// parts when over `threshold` (as the engine does), else in one request.
pub fn copy_work(size: u64, threshold: u64, part: u64) -> CopyWork {
    let over = |n: u64| n.saturating_sub(EXPRESS_FREE_BYTES);
    if size <= threshold || part == 0 {
        return CopyWork {
            requests: 1,
            billable_bytes: over(size),
        };
    }
    let full = size / part;
    let rest = size % part;
    let parts = full + u64::from(rest > 0);
    CopyWork {
        // Create and complete besides the parts.
        requests: parts + 2,
        billable_bytes: full * over(part) + over(rest),
    }
}

/// What a plan's warm takes, before pricing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanWork {
    pub list_requests: u64,
    /// Every object to copy, by the engine.
    pub engine: CopyWork,
    /// The objects to copy that a Batch job can copy (at most 5 GiB each).
    pub batch_objects: u64,
    /// Their copy requests (one each) and billable bytes.
    pub batch: CopyWork,
    /// The rest, copied by the engine beside the job.
    pub batch_large: CopyWork,
    /// What the warm keeps in the directory bucket, and for how long.
    pub storage: StorageWork,
}

/// The bytes a warm keeps in the directory bucket for its TTL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageWork {
    /// Of the objects it copies.
    pub copied_bytes: u64,
    /// Of the objects already cached, whose leases it extends.
    pub cached_bytes: u64,
    /// The request's TTL.
    pub ttl: std::time::Duration,
}

/// One priced line.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub item: &'static str,
    pub quantity: f64,
    pub unit: &'static str,
    pub usd_per_unit: f64,
}

impl Line {
    pub fn usd(&self) -> f64 {
        self.quantity * self.usd_per_unit
    }
}

/// An estimate: its lines and their total.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub lines: Vec<Line>,
}

impl Estimate {
    pub fn usd(&self) -> f64 {
        self.lines.iter().map(Line::usd).sum()
    }
}

#[allow(clippy::cast_precision_loss)] // request counts far below 2^52
fn thousands(n: u64) -> f64 {
    n as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)]
fn gigabytes(n: u64) -> f64 {
    n as f64 / GB
}

impl PriceTable {
    fn list(&self, w: &PlanWork) -> Line {
        Line {
            item: "LIST requests on the source",
            quantity: thousands(w.list_requests),
            unit: "1,000 requests",
            usd_per_unit: self.source_list_per_1000,
        }
    }

    fn copies(&self, item: &'static str, c: CopyWork) -> [Line; 2] {
        [
            Line {
                item,
                quantity: thousands(c.requests),
                unit: "1,000 requests",
                usd_per_unit: self.express_put_per_1000,
            },
            Line {
                item: "upload to S3 Express One Zone (above 512 KB per request)",
                quantity: gigabytes(c.billable_bytes),
                unit: "GB",
                usd_per_unit: self.express_upload_per_gb,
            },
        ]
    }

    /// The warm by this server's copy engine.
    pub fn engine(&self, w: &PlanWork) -> Estimate {
        let mut lines = vec![self.list(w)];
        lines.extend(self.copies("copy requests to the directory bucket", w.engine));
        Estimate { lines }
    }

    /// Storing the warm's objects for the TTL, whichever way they are
    /// copied: GB-months (2^30 bytes for [`HOURS_PER_MONTH`] hours) at
    /// the S3 Express One Zone storage price; a line for the objects to
    /// copy and one for those already cached.
    pub fn storage(&self, w: &PlanWork) -> Estimate {
        let months = w.storage.ttl.as_secs_f64() / 3600.0 / HOURS_PER_MONTH;
        #[allow(clippy::cast_precision_loss)]
        let gb_months = |bytes: u64| bytes as f64 / STORAGE_GB * months;
        Estimate {
            lines: vec![
                Line {
                    item: "S3 Express One Zone storage for the TTL: objects to copy",
                    quantity: gb_months(w.storage.copied_bytes),
                    unit: "GB-month",
                    usd_per_unit: self.express_storage_per_gb_month,
                },
                Line {
                    item: "S3 Express One Zone storage for the TTL: objects cached",
                    quantity: gb_months(w.storage.cached_bytes),
                    unit: "GB-month",
                    usd_per_unit: self.express_storage_per_gb_month,
                },
            ],
        }
    }

    /// The warm by one S3 Batch Operations job (objects over 5 GiB by the
    /// engine beside it); nothing when there is nothing to copy.
    pub fn batch(&self, w: &PlanWork) -> Estimate {
        let mut lines = vec![self.list(w)];
        if w.batch_objects > 0 {
            #[allow(clippy::cast_precision_loss)]
            let millions = w.batch_objects as f64 / 1_000_000.0;
            lines.extend([
                Line {
                    item: "Batch Operations job",
                    quantity: 1.0,
                    unit: "job",
                    usd_per_unit: self.batch_per_job,
                },
                Line {
                    item: "Batch Operations objects processed",
                    quantity: millions,
                    unit: "1,000,000 objects",
                    usd_per_unit: self.batch_per_million_objects,
                },
                Line {
                    item: "manifest and report writes to the working bucket",
                    quantity: thousands(2),
                    unit: "1,000 requests",
                    usd_per_unit: self.standard_put_per_1000,
                },
            ]);
            lines.extend(self.copies("copy requests by the job", w.batch));
        }
        if w.batch_large.requests > 0 {
            lines.extend(self.copies(
                "copy requests by the engine (objects over 5 GiB)",
                w.batch_large,
            ));
        }
        Estimate { lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn small_objects_are_one_request_and_upload_free_up_to_512_kb() {
        assert_eq!(
            copy_work(100, 8 * MIB, 8 * MIB),
            CopyWork {
                requests: 1,
                billable_bytes: 0
            }
        );
        assert_eq!(copy_work(MIB, 8 * MIB, 8 * MIB).billable_bytes, MIB / 2);
    }

    #[test]
    fn large_objects_are_parts_plus_create_and_complete() {
        // 20 MiB in 8 MiB parts: 8 + 8 + 4, each above 512 KB by its size
        // less 512 KB.
        let w = copy_work(20 * MIB, 8 * MIB, 8 * MIB);
        assert_eq!(w.requests, 3 + 2);
        assert_eq!(w.billable_bytes, 20 * MIB - 3 * EXPRESS_FREE_BYTES);
    }

    #[test]
    fn a_million_small_objects_cost_what_the_table_says() {
        let t = PriceTable::default();
        let w = PlanWork {
            list_requests: 1000,
            engine: CopyWork {
                requests: 1_000_000,
                billable_bytes: 0,
            },
            batch_objects: 1_000_000,
            batch: CopyWork {
                requests: 1_000_000,
                billable_bytes: 0,
            },
            batch_large: CopyWork::default(),
            storage: StorageWork::default(),
        };
        // 1,000 LISTs at $0.005/1k + 1M copies at $0.00113/1k.
        assert!((t.engine(&w).usd() - (0.005 + 1.13)).abs() < 1e-9);
        // Plus $0.25 per job, $1 per million objects, two PUTs.
        let batch = t.batch(&w).usd();
        assert!(
            (batch - (0.005 + 1.13 + 0.25 + 1.0 + 0.000_01)).abs() < 1e-9,
            "{batch}"
        );
    }

    #[test]
    fn nothing_to_copy_costs_the_listing_only_either_way() {
        let t = PriceTable::default();
        let w = PlanWork {
            list_requests: 3,
            ..PlanWork::default()
        };
        assert_eq!(t.batch(&w).lines.len(), 1, "no job for nothing");
        assert!((t.engine(&w).usd() - t.batch(&w).usd()).abs() < 1e-12);
    }

    #[test]
    fn storage_is_bytes_times_the_ttl_at_the_express_storage_price() {
        let t = PriceTable::default();
        assert_eq!(t.express_storage_per_gb_month, 0.11);
        // 10 GiB to copy and 5 GiB cached, for 30 days: 720 of 730 hours.
        let w = PlanWork {
            storage: StorageWork {
                copied_bytes: 10 * 1024 * MIB,
                cached_bytes: 5 * 1024 * MIB,
                ttl: std::time::Duration::from_secs(30 * 24 * 3600),
            },
            ..PlanWork::default()
        };
        let e = t.storage(&w);
        assert_eq!(e.lines.len(), 2);
        assert_eq!(e.lines[0].unit, "GB-month");
        assert!((e.lines[0].quantity - 10.0 * 720.0 / 730.0).abs() < 1e-9);
        assert!(
            (e.usd() - 15.0 * 720.0 / 730.0 * 0.11).abs() < 1e-9,
            "{}",
            e.usd()
        );
        // Storage is priced apart: neither way of copying includes it.
        assert!(t.engine(&w).usd().abs() < 1e-12);
        assert_eq!(t.storage(&PlanWork::default()).usd(), 0.0);
    }

    #[test]
    fn a_table_overrides_some_prices_and_refuses_negative_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(
            &path,
            "batch_per_job = 0.5\nsource = \"our contract\"\nexpress_storage_per_gb_month = 0.2\n",
        )
        .unwrap();
        let t = PriceTable::load(&path).unwrap();
        assert_eq!(t.batch_per_job, 0.5);
        assert_eq!(t.express_storage_per_gb_month, 0.2);
        assert_eq!(t.source, "our contract");
        assert_eq!(
            t.express_put_per_1000,
            PriceTable::default().express_put_per_1000
        );
        std::fs::write(&path, "batch_per_job = -1.0\n").unwrap();
        assert!(PriceTable::load(&path).unwrap_err().contains(">= 0"));
        std::fs::write(&path, "batch_per_jobb = 1.0\n").unwrap();
        assert!(PriceTable::load(&path)
            .unwrap_err()
            .contains("unknown field"));
    }
}

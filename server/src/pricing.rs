//! What a warm costs: a dry run's plan priced two ways, by this server's
//! copy engine and by an S3 Batch Operations job, from a price table that
//! the operator may override (`--price-table FILE`, TOML).

use std::path::Path;

use serde::Deserialize;

/// Prices in US dollars. Defaults: the AWS price list for us-east-1 (S3
/// Standard requests; S3 Express One Zone requests and uploads as changed
/// on 2025-04-10; S3 Batch Operations).
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
}

/// The part of each request to the directory bucket that uploads free.
pub const EXPRESS_FREE_BYTES: u64 = 512 * 1024;

const GB: f64 = 1_000_000_000.0;

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            source: "AWS price list, us-east-1: S3 Standard requests; S3 Express One Zone \
                     requests and uploads as of 2025-04-10; S3 Batch Operations \
                     (override with --price-table)"
                .into(),
            source_list_per_1000: 0.005,
            standard_put_per_1000: 0.005,
            express_put_per_1000: 0.001_13,
            express_upload_per_gb: 0.003_2,
            batch_per_job: 0.25,
            batch_per_million_objects: 1.0,
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
    fn a_table_overrides_some_prices_and_refuses_negative_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.toml");
        std::fs::write(&path, "batch_per_job = 0.5\nsource = \"our contract\"\n").unwrap();
        let t = PriceTable::load(&path).unwrap();
        assert_eq!(t.batch_per_job, 0.5);
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

//! Progress output: a live bar in a terminal, one plain line per update in a
//! log, one JSON object per message for machines.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use expresscache_client::pb::{self, Phase};
use expresscache_client::{Outcome, WarmReport};
use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::json::to_json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable: a progress bar on a terminal, plain lines otherwise.
    Text,
    /// One JSON object per line.
    Json,
}

/// The name of a phase as the CLI prints it.
pub fn phase_name(phase: i32) -> &'static str {
    match Phase::try_from(phase).unwrap_or(Phase::Unspecified) {
        Phase::Queued => "queued",
        Phase::Planning => "planning",
        Phase::Copying => "copying",
        Phase::Done => "done",
        Phase::Unspecified => "unknown",
    }
}

pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "SUCCEEDED",
        Outcome::PartiallyFailed => "PARTIALLY_FAILED",
        Outcome::Failed => "FAILED",
        Outcome::Cancelled => "CANCELLED",
        _ => "UNSPECIFIED",
    }
}

fn secs(d: Option<&prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
        .unwrap_or(0.0)
}

/// A dry run's plan as a table, then the two estimates line by line.
pub fn plan_lines(plan: &pb::WarmPlan) -> Vec<String> {
    let mut out = vec![format!(
        "{:<40} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "prefix", "to copy", "bytes", "cached", "bytes", "refused"
    )];
    let mut total = pb::PrefixPlan::default();
    for p in &plan.prefixes {
        let name = if p.prefix.is_empty() {
            "(whole bucket)"
        } else {
            &p.prefix
        };
        out.push(format!(
            "{:<40} {:>12} {:>12} {:>12} {:>12} {:>8}",
            name,
            p.objects_to_copy,
            HumanBytes(p.bytes_to_copy).to_string(),
            p.objects_cached,
            HumanBytes(p.bytes_cached).to_string(),
            p.objects_refused
        ));
        total.objects_to_copy += p.objects_to_copy;
        total.bytes_to_copy += p.bytes_to_copy;
        total.objects_cached += p.objects_cached;
        total.bytes_cached += p.bytes_cached;
        total.objects_refused += p.objects_refused;
    }
    if plan.prefixes.len() > 1 {
        out.push(format!(
            "{:<40} {:>12} {:>12} {:>12} {:>12} {:>8}",
            "total",
            total.objects_to_copy,
            HumanBytes(total.bytes_to_copy).to_string(),
            total.objects_cached,
            HumanBytes(total.bytes_cached).to_string(),
            total.objects_refused
        ));
    }
    out.push(format!(
        "{} listing requests; {} objects over 5 GiB (copied by the engine either way)",
        plan.list_requests, plan.large_objects
    ));
    let line = |l: &pb::CostLine| {
        format!(
            "  {:<58} {:>14.6} x ${:<10} per {:<18} = ${:.4}",
            l.item, l.quantity, l.usd_per_unit, l.unit, l.usd
        )
    };
    for (name, e) in [
        ("engine", &plan.engine),
        ("S3 Batch Operations", &plan.batch),
    ] {
        let e = e.clone().unwrap_or_default();
        out.push(format!("cost by {name}: ${:.4}", e.usd));
        out.extend(e.lines.iter().map(line));
    }
    // A server that predates storage prices sends none.
    if let Some(e) = &plan.storage {
        out.push(format!(
            "storage for the TTL (either way of copying): ${:.4}",
            e.usd
        ));
        out.extend(e.lines.iter().map(line));
    }
    out.push(match &plan.estimated_duration {
        Some(d) => format!(
            "estimated time by the engine: {} (listing, then copies at the rate this server last measured)",
            HumanDuration(Duration::from_secs_f64(secs(Some(d))))
        ),
        None => "estimated time by the engine: unknown (this server has not measured a copy rate yet)".into(),
    });
    out.push(format!("prices: {}", plan.prices));
    out
}

/// One human line describing a progress message.
pub fn progress_line(p: &pb::WarmProgress) -> String {
    let c = p.counters.unwrap_or_default();
    let shared = if c.objects_shared > 0 {
        format!("  shared {}", c.objects_shared)
    } else {
        String::new()
    };
    let mut line = format!(
        "[{:>7.1}s] {:<8} listed {}  hits {}  copied {}/{}{shared}  failed {}  {}/{}",
        secs(p.elapsed.as_ref()),
        phase_name(p.phase),
        c.objects_listed,
        c.objects_hit,
        c.objects_copied,
        c.objects_to_copy,
        c.objects_failed,
        HumanBytes(c.bytes_copied),
        HumanBytes(c.bytes_to_copy),
    );
    if p.objects_per_second > 0.0 {
        line.push_str(&format!("  {:.0} obj/s", p.objects_per_second));
    }
    if c.copy_retries > 0 {
        line.push_str(&format!(
            "  retries {} (throttled {}, concurrency {})",
            c.copy_retries, c.throttle_events, p.concurrency_limit
        ));
    }
    if let Some(j) = &p.batch_job {
        line.push_str(&format!(
            "  batch job {} {}: {}/{} done, {} failed",
            j.job_id, j.status, j.tasks_succeeded, j.total_tasks, j.tasks_failed
        ));
    }
    if let Some(eta) = &p.eta {
        let eta = Duration::from_secs_f64(secs(Some(eta)));
        line.push_str(&format!("  eta {}", HumanDuration(eta)));
    }
    line
}

/// The closing summary of a warm, then one line per failed key.
pub fn summary_lines(r: &WarmReport) -> Vec<String> {
    let c = &r.counters;
    let mut out = vec![format!(
        "warm {} {}: {} listed, {} hits, {} copied, {}{} failed, {} copied in {:.1}s",
        r.operation_id,
        outcome_name(r.outcome),
        c.objects_listed,
        c.objects_hit,
        c.objects_copied,
        if c.objects_shared > 0 {
            format!("{} copied by another warm, ", c.objects_shared)
        } else {
            String::new()
        },
        c.objects_failed,
        HumanBytes(c.bytes_copied),
        r.last.elapsed.as_secs_f64(),
    )];
    if let Some(e) = &r.error {
        out.push(format!("error: {e}"));
    }
    for f in &r.failures {
        out.push(format!("failed: {} ({}): {}", f.key, f.code, f.message));
    }
    if r.failures_omitted > 0 {
        out.push(format!("... and {} more failed keys", r.failures_omitted));
    }
    out
}

/// One warning per requested prefix under which the source listed no
/// object (`bucket` when known: `watch` does not know it).
pub fn empty_prefix_warnings(bucket: Option<&str>, prefixes: &[String]) -> Vec<String> {
    prefixes
        .iter()
        .map(|p| match bucket {
            Some(b) => format!("warning: no object under s3://{b}/{p}"),
            None => format!("warning: no object under prefix {p:?}"),
        })
        .collect()
}

/// Renders a warm's progress for one output format and destination.
pub enum Renderer {
    Bar(ProgressBar),
    Lines {
        last_printed: Option<Instant>,
        last_phase: i32,
        every: Duration,
    },
    Json,
}

impl Renderer {
    /// The renderer for `format` on the current stdout: a bar only when
    /// stdout is a terminal, so logs never get control codes.
    pub fn new(format: OutputFormat, log_every: Duration) -> Self {
        match format {
            OutputFormat::Json => Renderer::Json,
            OutputFormat::Text if std::io::stdout().is_terminal() => {
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix:<8} [{bar:30}] {pos}/{len} copied  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                Renderer::Bar(bar)
            }
            OutputFormat::Text => Renderer::Lines {
                last_printed: None,
                last_phase: -1,
                every: log_every,
            },
        }
    }

    pub fn update(&mut self, p: &pb::WarmProgress) {
        match self {
            Renderer::Json => print_flush(&to_json(p).to_string()),
            Renderer::Bar(bar) => {
                let c = p.counters.unwrap_or_default();
                bar.set_prefix(phase_name(p.phase));
                bar.set_length(c.objects_to_copy);
                bar.set_position(c.objects_copied + c.objects_failed);
                let mut msg = format!(
                    "listed {}  hits {}  failed {}  {}/{}",
                    c.objects_listed,
                    c.objects_hit,
                    c.objects_failed,
                    HumanBytes(c.bytes_copied),
                    HumanBytes(c.bytes_to_copy)
                );
                if p.objects_per_second > 0.0 {
                    msg.push_str(&format!("  {:.0} obj/s", p.objects_per_second));
                }
                if let Some(eta) = &p.eta {
                    msg.push_str(&format!(
                        "  eta {}",
                        HumanDuration(Duration::from_secs_f64(secs(Some(eta))))
                    ));
                }
                bar.set_message(msg);
            }
            Renderer::Lines {
                last_printed,
                last_phase,
                every,
            } => {
                // In a log, a line per phase change and then at most one per
                // interval keeps long warms readable.
                let due = last_printed.is_none_or(|t| t.elapsed() >= *every);
                if p.phase != *last_phase || due {
                    print_flush(&progress_line(p));
                    *last_printed = Some(Instant::now());
                    *last_phase = p.phase;
                }
            }
        }
    }

    /// Whether the output is JSON (machines read it: no extra lines).
    pub fn is_json(&self) -> bool {
        matches!(self, Renderer::Json)
    }

    /// Prints the final report (the JSON form was already printed by
    /// `update`).
    pub fn finish(self, report: &WarmReport) {
        match self {
            Renderer::Json => {}
            Renderer::Bar(bar) => {
                bar.finish_and_clear();
                for l in summary_lines(report) {
                    println!("{l}");
                }
            }
            Renderer::Lines { .. } => {
                for l in summary_lines(report) {
                    println!("{l}");
                }
            }
        }
    }

    /// Removes the bar before an error message.
    pub fn abandon(self) {
        if let Renderer::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn print_flush(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prefixes_are_in_the_final_json_and_warned_of_in_text() {
        let p = pb::WarmProgress {
            phase: Phase::Done as i32,
            outcome: pb::Outcome::Succeeded as i32,
            empty_prefixes: vec!["e/".into()],
            ..Default::default()
        };
        assert_eq!(to_json(&p)["empty_prefixes"][0], "e/");
        assert_eq!(
            empty_prefix_warnings(Some("demo-src"), &p.empty_prefixes),
            ["warning: no object under s3://demo-src/e/"]
        );
        assert_eq!(
            empty_prefix_warnings(None, &["".to_owned()]),
            [r#"warning: no object under prefix """#]
        );
    }

    #[test]
    fn a_plan_shows_the_storage_for_the_ttl_apart_from_the_copies() {
        let storage = pb::CostEstimate {
            usd: 1.5,
            lines: vec![pb::CostLine {
                item: "S3 Express One Zone storage for the TTL: objects to copy".into(),
                quantity: 2.0,
                unit: "GB-month".into(),
                usd_per_unit: 0.75,
                usd: 1.5,
            }],
        };
        let plan = pb::WarmPlan {
            storage: Some(storage),
            ..Default::default()
        };
        let lines = plan_lines(&plan);
        assert!(
            lines
                .iter()
                .any(|l| l == "storage for the TTL (either way of copying): $1.5000"),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("GB-month")), "{lines:#?}");
        assert_eq!(to_json(&plan)["storage"]["usd"], 1.5);
        assert!(!plan_lines(&pb::WarmPlan::default())
            .iter()
            .any(|l| l.starts_with("storage")));
    }

    #[test]
    fn progress_lines_have_no_control_codes() {
        let line = progress_line(&pb::WarmProgress {
            phase: Phase::Copying as i32,
            ..Default::default()
        });
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("copying"));
    }
}

//! What people read: the live progress line and the summary table.

use std::fmt::Write as _;

use loadwave_core::{DriverPhase, TestStatus, TestView};
use loadwave_proto::threshold::{Metric, Threshold};
use loadwave_proto::{TestType, describe_load};

/// `text` without control characters (C0 but newline and tab, DEL, C1): strings from a
/// server or a spec are printed through this, so no escape sequence reaches the terminal.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    let unwanted = |c: char| c.is_control() && c != '\n' && c != '\t';
    if text.contains(unwanted) {
        std::borrow::Cow::Owned(text.chars().filter(|c| !unwanted(*c)).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `12345` → `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}ms")
    } else if v >= 10.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.2}ms")
    }
}

/// One line of live progress: elapsed, counts, the last full second's rate (beside the
/// planned one) and percentiles, errors, drivers.
pub fn progress_line(view: &TestView, now_ms: u64) -> String {
    let elapsed = view
        .start_at_ms
        .map(|s| now_ms.saturating_sub(s) as f64 / 1000.0)
        .unwrap_or(0.0);
    let s = &view.summary;
    // The newest second may still be filling; show the one before it when there is one.
    let recent = match view.timeline.len() {
        0 => None,
        1 => view.timeline.last(),
        n => view.timeline.get(n - 2),
    };
    let running = view
        .drivers
        .iter()
        .filter(|d| d.state == DriverPhase::Running)
        .count();
    let (pct, counts) = match (s.expected_requests, view.spec.duration()) {
        (Some(expected), _) if expected > 0 => (
            100.0 * s.requests as f64 / expected as f64,
            format!("{} / {} req", thousands(s.requests), thousands(expected)),
        ),
        (_, Some(total)) if total > 0.0 => (
            (100.0 * elapsed / total).min(100.0),
            format!("{} req, {elapsed:.0} / {total:.0} s", thousands(s.requests)),
        ),
        _ => (0.0, format!("{} req", thousands(s.requests))),
    };
    let mut line = format!(
        "[{elapsed:>6.1}s] {:<9} {:>5.1}%  {counts}",
        view.status.as_str(),
        pct,
    );
    if let Some(p) = recent {
        let _ = write!(line, "  {} rps", thousands(p.requests));
        if let Some(planned) = p.planned_requests {
            let _ = write!(line, " (plan {})", thousands(planned));
        }
        if let Some(planned) = p.planned_concurrency {
            let _ = write!(line, "  conc {:.1} (plan {planned:.1})", p.concurrency);
        }
        let _ = write!(line, "  p50 {}  p99 {}", ms(p.p50_ms), ms(p.p99_ms));
    }
    let _ = write!(
        line,
        "  errors {}  drivers {running}/{} running",
        thousands(s.errors),
        view.drivers.len()
    );
    line
}

/// Prints a test on stdout: its JSON (as the REST API shows it) or the summary table.
pub fn print_view(view: &TestView, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(view).expect("views serialize")
        );
    } else {
        print!("{}", clean(&summary_table(view)));
    }
}

/// The end-of-test summary.
pub fn summary_table(view: &TestView) -> String {
    let spec = &view.spec;
    let s = &view.summary;
    let l = &s.latency_ms;
    let mut out = String::new();
    let title = spec.name.as_deref().unwrap_or("loadwave");
    let _ = writeln!(
        out,
        "{title} · {} · {} · {}",
        spec.test_type,
        spec.target_label(),
        describe_load(spec)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  status        {}{}",
        view.status.as_str(),
        view.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    );
    if let Some(a) = &view.aborted {
        let _ = writeln!(
            out,
            "  aborted       {:.1} s in: `{}` broke (measured {})",
            a.at_s,
            a.threshold,
            format_actual(&a.threshold, a.actual)
        );
    }
    let of = s
        .expected_requests
        .map(|n| format!(" of {}", thousands(n)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  requests      {}{of} in {:.2} s  ({} rps)",
        thousands(s.requests),
        s.duration_s,
        thousands(s.rps.round() as u64)
    );
    let _ = writeln!(
        out,
        "  errors        {} ({:.2}%)",
        thousands(s.errors),
        s.error_rate * 100.0
    );
    if spec.test_type == TestType::Tsunami {
        let _ = writeln!(
            out,
            "  late          {} waited more than 1 ms past their due time for a free connection",
            thousands(s.late)
        );
    }
    if let Some(lag) = s.send_lag_ms {
        let _ = writeln!(
            out,
            "  send lag      p50 {}  p99 {}  max {}  (due time to send, least precise driver)",
            ms(lag.p50),
            ms(lag.p99),
            ms(lag.max)
        );
    }
    let _ = writeln!(
        out,
        "  latency       min {}  mean {}  p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}",
        ms(l.min),
        ms(l.mean),
        ms(l.p50),
        ms(l.p90),
        ms(l.p95),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    );
    let codes: Vec<String> = s
        .status_codes
        .iter()
        .map(|(c, n)| format!("{c}: {}", thousands(*n)))
        .collect();
    let _ = writeln!(
        out,
        "  status codes  {}",
        if codes.is_empty() {
            "-".into()
        } else {
            codes.join("  ")
        }
    );
    let kinds: Vec<String> = s
        .error_kinds
        .iter()
        .map(|(k, n)| format!("{k}: {}", thousands(*n)))
        .collect();
    let _ = writeln!(
        out,
        "  error kinds   {}",
        if kinds.is_empty() {
            "-".into()
        } else {
            kinds.join("  ")
        }
    );
    if !s.by_request.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<20} {:>12} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "request", "requests", "share", "errors", "p50", "p90", "p99", "max"
        );
        for r in &s.by_request {
            let _ = writeln!(
                out,
                "  {:<20} {:>12} {:>6.1}% {:>8} {:>10} {:>10} {:>10} {:>10}",
                r.name,
                thousands(r.requests),
                if s.requests > 0 {
                    100.0 * r.requests as f64 / s.requests as f64
                } else {
                    0.0
                },
                thousands(r.errors),
                ms(r.latency_ms.p50),
                ms(r.latency_ms.p90),
                ms(r.latency_ms.p99),
                ms(r.latency_ms.max)
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<14} {:<10} {:>12} {:>8} {:>10} {:>10} {:>7}",
        "driver", "state", "requests", "errors", "p50", "p99", "cpu%"
    );
    for d in &view.drivers {
        let _ = writeln!(
            out,
            "  {:<14} {:<10} {:>12} {:>8} {:>10} {:>10} {:>7.0}{}",
            d.id,
            format!("{:?}", d.state).to_lowercase(),
            thousands(d.requests),
            thousands(d.errors),
            ms(d.latency_ms.p50),
            ms(d.latency_ms.p99),
            d.health.cpu_percent,
            match (d.missing_requests, d.missing_s) {
                (n, _) if n > 0 => format!("  ({} requests missing)", thousands(n)),
                (_, Some(secs)) if secs > 0.0 => format!("  (last {secs:.1} s missing)"),
                _ => String::new(),
            }
        );
    }
    for w in &view.warnings {
        let _ = writeln!(out, "\n  warning: {w}");
    }
    if let Some(v) = &view.verdict {
        let _ = writeln!(out);
        for c in &v.checks {
            let _ = writeln!(
                out,
                "  {} {:<24} actual {}",
                if c.passed { "✓" } else { "✗" },
                c.threshold,
                format_actual(&c.threshold, c.actual)
            );
        }
        for r in &v.reasons {
            let _ = writeln!(out, "  - {r}");
        }
        let _ = writeln!(
            out,
            "  verdict       {}",
            if v.passed { "PASS" } else { "FAIL" }
        );
    } else if view.status == TestStatus::Running {
        let _ = writeln!(out, "  verdict       (running)");
    }
    out
}

fn format_actual(threshold: &str, actual: f64) -> String {
    match Threshold::parse(threshold).map(|t| t.metric) {
        Ok(Metric::ErrorRate) => format!("{:.3}%", actual * 100.0),
        Ok(Metric::Rps) => format!("{actual:.1}"),
        Ok(Metric::Requests | Metric::Errors) => thousands(actual as u64),
        _ => ms(actual),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(ms(0.123), "0.12ms");
        assert_eq!(ms(12.34), "12.3ms");
        assert_eq!(ms(1500.0), "1.50s");
        assert_eq!(format_actual("error_rate < 1%", 0.005), "0.500%");
    }

    #[test]
    fn control_characters_are_stripped() {
        assert_eq!(
            clean("a\x1b[31mred\x07\r\u{7f}\u{9b}2J\u{85}b\n\tc é"),
            "a[31mred2Jb\n\tc é"
        );
        assert!(matches!(
            clean("plain\ntext"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}

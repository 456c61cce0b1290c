//! The HTML report of a test: one self-contained page (inline CSS and SVG, no scripts)
//! that can be saved and mailed to a colleague.

use std::fmt::Write as _;

use loadwave_core::{TestView, TimelinePoint};
use loadwave_proto::threshold::{Metric, Threshold};
use loadwave_proto::{TestType, describe_load, format_duration_s};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Query parameter names whose values are secrets, matched within the lowercase name
/// without `-` and `_` (so `api_key`, `X-Api-Key` and `accessToken` all match).
const SECRET_QUERY_NAMES: [&str; 10] = [
    "token",
    "key",
    "sig",
    "password",
    "passwd",
    "pwd",
    "secret",
    "auth",
    "credential",
    "session",
];

fn secret_query_name(name: &str) -> bool {
    let plain: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_QUERY_NAMES.iter().any(|s| plain.contains(s))
}

/// A URL as the report shows it: the values of query parameters named like secrets
/// (`token`, `key`, `sig`, `signature`, `password`, `secret`, `auth`, `api_key`,
/// `access_token`, ...) and a password in the user part replaced by `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let (before_fragment, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let mut out = String::with_capacity(url.len());
    // scheme://user:password@host/...: the password goes.
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            out.push_str(scheme);
            out.push_str("://");
            match authority.rsplit_once('@') {
                Some((user, host)) => {
                    match user.split_once(':') {
                        Some((name, _)) => {
                            let _ = write!(out, "{name}:{}", loadwave_proto::spec::REDACTED);
                        }
                        None => out.push_str(user),
                    }
                    out.push('@');
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
        }
        None => out.push_str(base),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if secret_query_name(name) => {
                    format!("{name}={}", loadwave_proto::spec::REDACTED)
                }
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn date(unix_ms: Option<u64>) -> String {
    match unix_ms {
        None => "–".into(),
        Some(ms) => {
            let secs = ms / 1000;
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(days as i64);
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            )
        }
    }
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    /// Bars, one per second.
    Bar,
    /// A solid line.
    Line,
    /// A dashed line (what was planned).
    Plan,
}

/// A series' value in one second, `None` where it has none.
type ValueOf<'a> = Box<dyn Fn(&TimelinePoint) -> Option<f64> + 'a>;

/// One series of a chart: its name, colour, mark and value per second.
struct Series<'a> {
    name: String,
    color: &'a str,
    mark: Mark,
    value: ValueOf<'a>,
}

impl<'a> Series<'a> {
    fn new(
        name: impl Into<String>,
        color: &'a str,
        mark: Mark,
        value: impl Fn(&TimelinePoint) -> Option<f64> + 'a,
    ) -> Self {
        Series {
            name: name.into(),
            color,
            mark,
            value: Box::new(value),
        }
    }
}

/// How the axis label of a chart reads its top value.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    Ms,
}

/// A chart of series per second.
fn chart(points: &[TimelinePoint], title: &str, series: &[Series<'_>], unit: Unit) -> String {
    let (w, h, pad) = (760.0, 180.0, 40.0);
    let mut out = format!("<figure><figcaption>{}</figcaption>", esc(title));
    if points.is_empty() {
        out.push_str("<p class=muted>No data yet.</p></figure>");
        return out;
    }
    let max = points
        .iter()
        .flat_map(|p| series.iter().filter_map(move |s| (s.value)(p)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let n = points.len() as f64;
    let step = (w - pad) / n;
    let x = |i: usize| pad + step * i as f64 + step / 2.0;
    let y = |v: f64| h - 20.0 - (v / max) * (h - 30.0);
    let _ = write!(
        out,
        "<svg viewBox='0 0 {w} {h}' role=img aria-label='{}'>",
        esc(title)
    );
    let _ = write!(
        out,
        "<line x1='{pad}' y1='{}' x2='{w}' y2='{}' class=axis /><text x='0' y='14' class=tick>{}</text><text x='0' y='{}' class=tick>0</text>",
        h - 20.0,
        h - 20.0,
        match unit {
            Unit::Count if max >= 10.0 => format!("{max:.0}"),
            Unit::Count => format!("{max:.1}"),
            Unit::Ms => ms(max),
        },
        h - 20.0
    );
    for s in series {
        let color = s.color;
        let name = esc(&s.name);
        if s.mark == Mark::Bar {
            for (i, p) in points.iter().enumerate() {
                let Some(v) = (s.value)(p) else { continue };
                let top = y(v);
                let _ = write!(
                    out,
                    "<rect x='{:.1}' y='{top:.1}' width='{:.1}' height='{:.1}' fill='{color}'><title>second {}: {v:.0} {name}</title></rect>",
                    x(i) - step * 0.4,
                    step * 0.8,
                    (h - 20.0 - top).max(0.0),
                    p.second,
                );
            }
        } else {
            let path: Vec<String> = points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| (s.value)(p).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
                .collect();
            if path.is_empty() {
                continue;
            }
            let dash = if s.mark == Mark::Plan {
                " stroke-dasharray='6 4'"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<polyline points='{}' fill='none' stroke='{color}' stroke-width='2'{dash}><title>{name}</title></polyline>",
                path.join(" ")
            );
        }
    }
    let last = points.last().map(|p| p.second).unwrap_or(0);
    let _ = write!(
        out,
        "<text x='{pad}' y='{h}' class=tick>0 s</text><text x='{}' y='{h}' class=tick text-anchor=end>{last} s</text></svg>",
        w - 2.0
    );
    out.push_str("<div class=legend>");
    for s in series {
        let _ = write!(
            out,
            "<span><i style='background:{}'></i>{}</span>",
            s.color,
            esc(&s.name)
        );
    }
    out.push_str("</div></figure>");
    out
}

/// Colours for the requests of a mix, in order.
const MIX_COLORS: [&str; 6] = [
    "#4c8bf5", "#2da44e", "#bf8700", "#8250df", "#cf222e", "#1b7c83",
];

/// A check's measured value in the unit its threshold speaks.
fn measured(threshold: &str, actual: f64) -> String {
    match Threshold::parse(threshold).map(|t| t.metric) {
        Ok(Metric::ErrorRate) => format!("{:.3}%", actual * 100.0),
        Ok(Metric::Rps) => format!("{actual:.1} rps"),
        Ok(Metric::Requests | Metric::Errors) => format!("{actual:.0}"),
        _ => ms(actual),
    }
}

/// Renders the report.
pub fn render(v: &TestView) -> String {
    let s = &v.summary;
    let l = &s.latency_ms;
    let spec = &v.spec;
    let title = spec
        .name
        .clone()
        .unwrap_or_else(|| format!("Test {}", v.id));
    let verdict = match &v.verdict {
        Some(vd) if vd.passed => "<span class='badge pass'>PASS</span>".to_string(),
        Some(_) => "<span class='badge fail'>FAIL</span>".to_string(),
        None => format!("<span class='badge'>{}</span>", v.status.as_str()),
    };
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title>\
<meta name=viewport content='width=device-width,initial-scale=1'><style>\
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:820px;color:#1d232a;padding:0 1rem}}\
h1{{font-size:1.5rem;margin:0}}h2{{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ddd}}\
table{{border-collapse:collapse;width:100%}}td,th{{padding:.25rem .5rem;text-align:right;border-bottom:1px solid #eee;white-space:nowrap}}\
td:first-child,th:first-child{{text-align:left;white-space:normal}}.muted{{color:#6a737d}}\
.badge{{display:inline-block;padding:.1rem .6rem;border-radius:1rem;background:#eee;font-weight:600;margin-left:.5rem}}\
.pass{{background:#d7f5dd;color:#116329}}.fail{{background:#ffe0e0;color:#a40e26}}\
.grid{{display:grid;grid-template-columns:repeat(4,1fr);gap:.5rem}}.grid div{{background:#f6f8fa;padding:.6rem;border-radius:.4rem}}\
.grid b{{display:block;font-size:1.25rem}}svg{{width:100%;height:auto}}.axis{{stroke:#999}}.tick{{font-size:11px;fill:#6a737d}}\
.legend span{{margin-right:1rem;font-size:13px}}.legend i{{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}}\
figure{{margin:1rem 0}}figcaption{{font-weight:600}}li.warn{{color:#8a5300}}</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        o,
        "<h1>{}{verdict}</h1><p class=muted>{} · {} · {} · started {} · id {}</p>",
        esc(&title),
        spec.test_type,
        esc(&match &spec.target_url {
            Some(url) => redact_url(url),
            None => spec.target_label(),
        }),
        esc(&describe_load(spec)),
        date(v.start_at_ms.or(Some(v.created_at_ms))),
        esc(&v.id)
    );
    if let Some(e) = &v.error {
        let _ = write!(o, "<p class='badge fail'>{}</p>", esc(e));
    }
    if let Some(a) = &v.aborted {
        let _ = write!(
            o,
            "<p class='badge fail'>aborted {:.1} s in: <code>{}</code> broke (measured {})</p>",
            a.at_s,
            esc(&a.threshold),
            measured(&a.threshold, a.actual)
        );
    }
    let _ = write!(
        o,
        "<div class=grid><div>requests<b>{}</b>{}</div><div>throughput<b>{:.0} rps</b>over {:.2} s</div>\
<div>errors<b>{}</b>{:.2}%</div><div>p99<b>{}</b>p50 {}</div></div>",
        s.requests,
        match (s.expected_requests, spec.duration()) {
            (Some(n), _) => format!("of {n}"),
            (None, Some(d)) => format!("in a {} test", format_duration_s(d)),
            (None, None) => String::new(),
        },
        s.rps,
        s.duration_s,
        s.errors,
        s.error_rate * 100.0,
        ms(l.p99),
        ms(l.p50)
    );
    if let Some(stages) = &spec.stages {
        let unit = match spec.test_type {
            TestType::Tsunami => "requests per second, whole test",
            TestType::Avalanche => "connections per driver",
        };
        let _ = write!(
            o,
            "<h2>Stages</h2><table><tr><th>stage</th><th>from (s)</th><th>duration</th><th>ramp ({unit})</th></tr>"
        );
        let (mut at, mut from) = (0.0, spec.start_target_or_zero());
        for (i, st) in stages.iter().enumerate() {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{at:.1}</td><td>{}</td><td>{from} → {}</td></tr>",
                i + 1,
                format_duration_s(st.duration_s),
                st.target
            );
            at += st.duration_s;
            from = st.target;
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Latency</h2><table><tr><th>min</th><th>mean</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>p99.9</th><th>max</th></tr><tr>");
    for x in [l.min, l.mean, l.p50, l.p90, l.p95, l.p99, l.p999, l.max] {
        let _ = write!(o, "<td>{}</td>", ms(x));
    }
    o.push_str("</tr></table><p class=muted>Percentiles of every response, merged from the drivers' HDR histograms (3 significant digits).");
    if spec.test_type == TestType::Tsunami {
        let _ = write!(
            o,
            " Tsunami latencies count from each request's due time; {} requests waited for a free connection.",
            s.late
        );
    }
    o.push_str("</p>");
    if !s.by_request.is_empty() {
        o.push_str("<h2>Requests of the mix</h2><table><tr><th>request</th><th>weight</th><th>requests</th><th>share</th><th>errors</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>statuses</th></tr>");
        let total_weight: f64 = s.by_request.iter().map(|r| r.weight).sum();
        for r in &s.by_request {
            let statuses: Vec<String> = r
                .status_codes
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .chain(r.error_kinds.iter().map(|(k, n)| format!("{k}: {n}")))
                .collect();
            let _ = write!(
                o,
                "<tr><td><b>{}</b><br><span class=muted>{} {}</span></td><td>{} ({:.0}%)</td><td>{}</td><td>{:.1}%</td><td>{} ({:.2}%)</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.name),
                esc(&r.method),
                esc(&redact_url(&r.url)),
                r.weight,
                if total_weight > 0.0 {
                    100.0 * r.weight / total_weight
                } else {
                    0.0
                },
                r.requests,
                if s.requests > 0 {
                    100.0 * r.requests as f64 / s.requests as f64
                } else {
                    0.0
                },
                r.errors,
                r.error_rate * 100.0,
                ms(r.latency_ms.p50),
                ms(r.latency_ms.p90),
                ms(r.latency_ms.p99),
                ms(r.latency_ms.max),
                esc(&statuses.join(" · "))
            );
        }
        o.push_str("</table><p class=muted>Each request's percentiles come from its own merged histogram.</p>");
    }
    let open = v.timeline.iter().any(|p| p.planned_requests.is_some());
    let mut throughput = vec![
        Series::new("requests", "#4c8bf5", Mark::Bar, |p| {
            Some(p.requests as f64)
        }),
        Series::new("errors", "#e5534b", Mark::Bar, |p| Some(p.errors as f64)),
    ];
    if open {
        throughput.push(Series::new("planned", "#1d232a", Mark::Plan, |p| {
            p.planned_requests.map(|n| n as f64)
        }));
    }
    o.push_str(&chart(
        &v.timeline,
        if open {
            "Requests per second, planned and achieved"
        } else {
            "Requests per second"
        },
        &throughput,
        Unit::Count,
    ));
    let mut concurrency = vec![Series::new(
        "in flight (achieved)",
        "#8250df",
        Mark::Line,
        |p| Some(p.concurrency),
    )];
    if v.timeline.iter().any(|p| p.planned_concurrency.is_some()) {
        concurrency.push(Series::new("planned", "#1d232a", Mark::Plan, |p| {
            p.planned_concurrency
        }));
    }
    o.push_str(&chart(
        &v.timeline,
        "Concurrency: requests in flight, all drivers",
        &concurrency,
        Unit::Count,
    ));
    o.push_str(&chart(
        &v.timeline,
        "Latency per second",
        &[
            Series::new("p50", "#2da44e", Mark::Line, |p| Some(p.p50_ms)),
            Series::new("p99", "#bf8700", Mark::Line, |p| Some(p.p99_ms)),
            Series::new("max", "#cf222e", Mark::Line, |p| Some(p.max_ms)),
        ],
        Unit::Ms,
    ));
    if !s.by_request.is_empty() {
        let per_request = |f: fn(&loadwave_core::TimelineRequest) -> f64| {
            s.by_request
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let name = r.name.clone();
                    Series::new(
                        r.name.clone(),
                        MIX_COLORS[i % MIX_COLORS.len()],
                        Mark::Line,
                        move |p: &TimelinePoint| {
                            p.by_request.iter().find(|x| x.name == name).map(f)
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        o.push_str(&chart(
            &v.timeline,
            "Requests per second, by request",
            &per_request(|r| r.requests as f64),
            Unit::Count,
        ));
        o.push_str(&chart(
            &v.timeline,
            "p99 per second, by request",
            &per_request(|r| r.p99_ms),
            Unit::Ms,
        ));
    }
    o.push_str(
        "<h2>Responses and errors</h2><table><tr><th>status / error</th><th>count</th></tr>",
    );
    for (code, n) in &s.status_codes {
        let _ = write!(o, "<tr><td>HTTP {}</td><td>{n}</td></tr>", esc(code));
    }
    for (kind, n) in &s.error_kinds {
        let _ = write!(o, "<tr><td>{} error</td><td>{n}</td></tr>", esc(kind));
    }
    o.push_str("</table><h2>Drivers</h2><table><tr><th>driver</th><th>state</th><th>requests</th><th>errors</th><th>p50</th><th>p99</th><th>start delay</th><th>peak CPU</th></tr>");
    for d in &v.drivers {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}%{}</td></tr>",
            esc(&d.id),
            format!("{:?}", d.state).to_lowercase(),
            match (d.missing_requests, d.missing_s) {
                (n, _) if n > 0 => format!(" ({n} missing)"),
                (_, Some(secs)) if secs > 0.0 => format!(" (last {secs:.1} s missing)"),
                _ => String::new(),
            },
            d.requests,
            d.errors,
            ms(d.latency_ms.p50),
            ms(d.latency_ms.p99),
            d.start_delay_ms.map(ms).unwrap_or_else(|| "–".into()),
            d.health.cpu_percent,
            if d.saturated { " ⚠" } else { "" }
        );
    }
    o.push_str("</table>");
    if let Some(skew) = s.start_skew_ms {
        let _ = write!(
            o,
            "<p class=muted>Start skew across drivers: {}.</p>",
            ms(skew)
        );
    }
    if let Some(lag) = s.send_lag_ms {
        let _ = write!(
            o,
            "<p class=muted>Send lag (due time to send, least precise driver): p50 {}, p99 {}, max {}. It is the tester's own timing error, and it is inside every latency above.</p>",
            ms(lag.p50),
            ms(lag.p99),
            ms(lag.max)
        );
    }
    if let Some(vd) = &v.verdict {
        o.push_str("<h2>Verdict</h2><ul>");
        for c in &vd.checks {
            let _ = write!(
                o,
                "<li>{} <code>{}</code> — measured {}</li>",
                if c.passed { "✓" } else { "✗" },
                esc(&c.threshold),
                measured(&c.threshold, c.actual)
            );
        }
        for r in &vd.reasons {
            let _ = write!(o, "<li class=warn>{}</li>", esc(r));
        }
        if vd.checks.is_empty() && vd.reasons.is_empty() {
            o.push_str("<li>✓ every driver completed its part and every request was counted (no thresholds were set)</li>");
        }
        o.push_str("</ul>");
    }
    if !v.warnings.is_empty() {
        o.push_str("<h2>Warnings</h2><ul>");
        for w in &v.warnings {
            let _ = write!(o, "<li class=warn>{}</li>", esc(w));
        }
        o.push_str("</ul>");
    }
    o.push_str("<p class=muted>Generated by loadwave.</p></body></html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_secrets() {
        for (url, shown) in [
            (
                "http://h/p?token=abc&page=2&api_key=k&X-Amz-Signature=s",
                "http://h/p?token=<redacted>&page=2&api_key=<redacted>&X-Amz-Signature=<redacted>",
            ),
            (
                "https://u:pw@h:8/p?password=x&access_token=y&sig=z&q=1#frag",
                "https://u:<redacted>@h:8/p?password=<redacted>&access_token=<redacted>&sig=<redacted>&q=1#frag",
            ),
            (
                "http://h/?secret=1&auth=2&flag",
                "http://h/?secret=<redacted>&auth=<redacted>&flag",
            ),
            ("http://h/plain", "http://h/plain"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn dates_and_escaping() {
        assert_eq!(date(Some(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(Some(1_700_000_000_000)), "2023-11-14 22:13:20 UTC");
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}

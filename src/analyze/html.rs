//! The `--html` page: self-contained, one inline SVG histogram per route and a 401/429 timeline.

use std::fmt::Write as _;

use super::Report;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Bars of `(upper bound, count)` as an SVG of `width` x `height`.
fn histogram_svg(title: &str, bins: &[(f64, u64)]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const PAD: f64 = 30.0;
    let max = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let bar = (W - 2.0 * PAD) / bins.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="histogram" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="{}">"#,
        escape(title)
    );
    for (i, (upper, count)) in bins.iter().enumerate() {
        let h = (H - 2.0 * PAD) * (*count as f64) / max;
        let _ = write!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a7bd0"><title>≤ {upper:.1} ms: {count}</title></rect>"##,
            PAD + bar * i as f64,
            H - PAD - h,
            (bar - 1.0).max(1.0),
            h
        );
    }
    if let (Some(first), Some(last)) = (bins.first(), bins.last()) {
        let lo = first.0 - (last.0 - first.0) / (bins.len().max(2) - 1) as f64;
        let _ = write!(
            svg,
            r#"<text x="{PAD}" y="{:.0}" font-size="11">{lo:.1} ms</text><text x="{:.0}" y="{:.0}" font-size="11" text-anchor="end">{:.1} ms</text>"#,
            H - 8.0,
            W - PAD,
            H - 8.0,
            last.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn timeline_svg(timeline: &[(i64, u64, u64)]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const PAD: f64 = 30.0;
    let mut svg = format!(
        r#"<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" aria-label="401 and 429 per minute">"#
    );
    let (Some(first), Some(last)) = (timeline.first(), timeline.last()) else {
        svg.push_str(r#"<text x="30" y="100">no 401 or 429 responses</text></svg>"#);
        return svg;
    };
    let span = (last.0 - first.0).max(1) as f64;
    let max = timeline.iter().map(|t| t.1.max(t.2)).max().unwrap_or(1).max(1) as f64;
    for (color, pick) in [("#d04a4a", 1usize), ("#d0a24a", 2)] {
        let points: Vec<String> = timeline
            .iter()
            .map(|t| {
                let v = if pick == 1 { t.1 } else { t.2 } as f64;
                let x = PAD + (W - 2.0 * PAD) * (t.0 - first.0) as f64 / span;
                let y = H - PAD - (H - 2.0 * PAD) * v / max;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{PAD}" y="16" font-size="11" fill="#d04a4a">401</text><text x="60" y="16" font-size="11" fill="#d0a24a">429</text></svg>"##
    );
    svg
}

pub(super) fn render(report: &Report) -> String {
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>portcullis access-log report</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;\
         text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>\n",
    );
    let _ = writeln!(
        page,
        "<h1>Access-log report</h1><p>{} entries, {} malformed lines skipped.</p>",
        report.parsed, report.malformed
    );
    page.push_str("<h2>Upstream latency by route</h2>\n");
    for r in &report.routes {
        let _ = writeln!(
            page,
            "<section class=\"route\"><h3>{}</h3><p>p50 {:.1} ms · p95 {:.1} ms · p99 {:.1} ms · n = {}</p>{}</section>",
            escape(&r.route),
            r.p50,
            r.p95,
            r.p99,
            r.n,
            histogram_svg(&r.route, &r.histogram)
        );
    }
    page.push_str("<h2>401 and 429 per minute</h2>\n");
    page.push_str(&timeline_svg(&report.timeline));
    page.push_str("\n<h2>Top rate-limited consumers</h2><table><tr><th>consumer</th><th>429s</th></tr>");
    for (consumer, count) in &report.top_rate_limited {
        let _ = write!(page, "<tr><td>{}</td><td>{count}</td></tr>", escape(consumer));
    }
    page.push_str("</table>\n<h2>401s by client IP</h2><table><tr><th>client IP</th><th>401s</th></tr>");
    for f in &report.auth_failures {
        let flag = if f.investigate { " <strong>*** INVESTIGATE</strong>" } else { "" };
        let _ = write!(page, "<tr><td>{}</td><td>{}{flag}</td></tr>", escape(&f.ip), f.count);
    }
    page.push_str("</table>\n");
    if let Some(o) = &report.overhead {
        let _ = writeln!(
            page,
            "<h2>Gateway overhead</h2><p>p50 {:.1} ms · p95 {:.1} ms · p99 {:.1} ms · mean {:.1} ms (n = {})</p>",
            o.p50, o.p95, o.p99, o.mean, o.n
        );
    }
    if !report.spikes.is_empty() {
        page.push_str("<h2>Spikes</h2><ul>");
        for s in &report.spikes {
            let _ = write!(
                page,
                "<li>{}: {} × {} (median minute {:.1})</li>",
                escape(&s.minute),
                s.count,
                s.status,
                s.median
            );
        }
        page.push_str("</ul>\n");
    }
    page.push_str("</body></html>\n");
    page
}

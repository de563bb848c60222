//! The analyzer against the seed's own script, on a log written by a real gateway run plus
//! hand-made lines (malformed ones included).

#![cfg(feature = "analyze")]

use portcullis::analyze::{Analyzer, Report, Window};

use crate::support::*;

/// The seed script's report on `log`, kept in `tests/fixtures/analyze/<golden>` so a clone checks
/// the analyzer's numbers without the script. Where `PORTCULLIS_SEED_SCRIPT` names the script,
/// the golden file is cross-checked against a fresh run of it (and, with `PORTCULLIS_BLESS=1`,
/// rewritten from it).
fn golden_report(golden: &str, log: &str) -> String {
    let golden = fixture(&format!("analyze/{golden}"));
    if let Some(script) = seed_script() {
        let path = temp_path("golden.log");
        std::fs::write(&path, log).unwrap();
        let fresh = seed_script_report(&script, &path);
        let _ = std::fs::remove_file(&path);
        if std::env::var("PORTCULLIS_BLESS").as_deref() == Ok("1") {
            std::fs::write(&golden, &fresh).unwrap();
        }
        let kept = std::fs::read_to_string(&golden).unwrap_or_default();
        assert_eq!(kept, fresh, "{} differs from the seed script's report", golden.display());
    }
    std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()))
}

/// Hand-made lines: 429s by consumer and by IP (ties keep first-seen order), 401 storms, exact
/// latencies, a null route, numbers as floats, and garbage.
fn synthetic() -> String {
    let mut lines = Vec::new();
    let ts = |minute: u32, second: u32| format!("2026-11-28T06:{minute:02}:{second:02}.000Z");
    for i in 0..150u32 {
        lines.push(format!(
            r#"{{"timestamp":"{}","status":401,"client_ip":"203.0.113.66","route_name":null,"upstream_latency_ms":null,"gateway_latency_ms":0.4}}"#,
            ts(10, i % 60)
        ));
    }
    for i in 0..30u32 {
        let ip = if i % 3 == 0 { "198.51.100.1" } else { "198.51.100.2" };
        lines.push(format!(r#"{{"timestamp":"{}","status":401,"client_ip":"{ip}"}}"#, ts(11 + i % 5, i)));
    }
    for i in 0..40u32 {
        let who = match i % 4 {
            0 => r#""consumer_id":"alice","#.to_owned(),
            1 => r#""consumer_id":"bob","#.to_owned(),
            2 => String::new(),
            _ => r#""consumer_id":"carol","#.to_owned(),
        };
        lines.push(format!(
            r#"{{"timestamp":"{}","status":429.0,{who}"client_ip":"192.0.2.{}","route_name":"orders","upstream_latency_ms":null}}"#,
            ts(20, i),
            i % 2
        ));
    }
    for i in 0..57u32 {
        let up = f64::from(i * 37 % 101) / 7.0 + 1.0;
        let gw = up + f64::from(i % 5) * 0.125 + 0.25;
        lines.push(format!(
            r#"{{"timestamp":"{}","status":200,"client_ip":"10.0.0.{}","route_name":"users-v{}","upstream_latency_ms":{up},"gateway_latency_ms":{gw}}}"#,
            ts(30, i),
            i % 7,
            1 + i % 2
        ));
    }
    lines.push(
        r#"{"status":200,"route_name":"tiny","upstream_latency_ms":1.0,"gateway_latency_ms":0.5}"#.into(),
    );
    lines.push("this is not json".into());
    lines.push(r#"{"truncated": "#.into());
    lines.push(String::new());
    lines.join("\n") + "\n"
}

async fn real_gateway_lines() -> String {
    let up = Upstream::start().await;
    let yaml = format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: real-route\n    paths: [/]\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    for i in 0..25 {
        assert_eq!(get(&gw.url(&format!("/item/{i}"))).await.status, 200);
    }
    gw.stop().await.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn same_numbers_as_the_seed_script() {
    let text = synthetic();
    let expected = golden_report("synthetic.report.txt", &text);
    let mut analyzer = Analyzer::default();
    analyzer.feed_reader(std::io::Cursor::new(text.as_bytes())).unwrap();
    let report = analyzer.report();
    let ours = report.to_text();
    // Python counts the malformed lines out of "Parsed" too; our report adds sections after its
    // own, so the script's whole output is a prefix of ours.
    assert!(ours.starts_with(&expected), "--- python ---\n{expected}\n--- portcullis ---\n{ours}");

    assert_eq!(report.parsed, 150 + 30 + 40 + 57 + 1);
    assert_eq!(report.malformed, 2);
    assert_eq!(
        report.top_rate_limited,
        [("alice".to_owned(), 10), ("bob".into(), 10), ("192.0.2.0".into(), 10), ("carol".into(), 10)]
    );
    assert_eq!(report.auth_failures[0].ip, "203.0.113.66");
    assert_eq!(report.auth_failures[0].count, 150);
    assert!(report.auth_failures[0].investigate);
    assert!(!report.auth_failures[1].investigate);
    let routes: Vec<&str> = report.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(routes, ["users-v1", "users-v2"], "`tiny` has fewer than 10 samples");
    assert!(ours.contains("*** INVESTIGATE"));
    // 150 401s in one minute against a median minute of 0 (quiet minutes count).
    assert!(
        report.spikes.iter().any(|s| s.status == 401 && s.count == 150 && s.minute == "2026-11-28T06:10:00Z")
    );
    assert!(report.spikes.iter().any(|s| s.status == 429 && s.count == 40));
}

/// What a real gateway writes, read by the script itself: its latencies vary run to run, so no
/// golden file can hold the script's answer.
#[tokio::test]
async fn same_numbers_as_the_seed_script_on_a_real_gateway_log() {
    let Some(script) = seed_script() else {
        return skipped("PORTCULLIS_SEED_SCRIPT does not name the seed's analyze_gateway_logs.py");
    };
    let text = real_gateway_lines().await + &synthetic();
    let path = temp_path("analyze.log");
    std::fs::write(&path, &text).unwrap();
    let python = seed_script_report(&script, &path);
    let _ = std::fs::remove_file(&path);
    let mut analyzer = Analyzer::default();
    analyzer.feed_reader(std::io::Cursor::new(text.as_bytes())).unwrap();
    let report = analyzer.report();
    let ours = report.to_text();
    assert!(ours.starts_with(&python), "--- python ---\n{python}\n--- portcullis ---\n{ours}");
    assert_eq!(report.parsed, 25 + 150 + 30 + 40 + 57 + 1);
    let routes: Vec<&str> = report.routes.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(routes, ["real-route", "users-v1", "users-v2"]);
}

/// 60,000 generated lines: enough samples per route and of overhead for the analyzer to merge
/// many batches of values, with latencies at microsecond resolution as the gateway writes them
/// (and a few written otherwise: more digits, exponents, strings, integers).
fn generated(lines: u32) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut out = String::new();
    for i in 0..lines {
        let status = [200, 200, 200, 200, 200, 200, 200, 401, 429, 502][next(10) as usize];
        let up_us = 300 + next(40_000) + if next(20) == 0 { next(200_000) } else { 0 };
        let up = match next(50) {
            0 => format!("{}.{:06}", up_us / 1000, next(1_000_000)),
            1 => format!("\"{}.{:03}\"", up_us / 1000, up_us % 1000),
            2 => format!("{}e-3", up_us),
            3 => format!("{}", up_us / 1000),
            _ => format!("{}.{:03}", up_us / 1000, up_us % 1000),
        };
        // Now and then a gateway time below the upstream's: a negative overhead, skipped.
        let gw_us = (up_us + 40 + next(700)).saturating_sub(if next(100) == 0 { 2_000 } else { 0 });
        let consumer = if status == 429 && next(3) > 0 {
            format!(r#""consumer_id":"c{}","#, next(40))
        } else {
            String::new()
        };
        out.push_str(&format!(
            r#"{{"timestamp":"2026-11-28T07:{:02}:{:02}.000Z","status":{status},{consumer}"client_ip":"10.0.{}.{}","route_name":"r{}","upstream_latency_ms":{},"gateway_latency_ms":{}.{:03}}}"#,
            (i / 1000) % 60,
            (i / 20) % 60,
            next(3),
            next(200),
            next(12),
            if status == 401 { "null".to_owned() } else { up },
            gw_us / 1000,
            gw_us % 1000,
        ));
        out.push('\n');
    }
    out
}

#[test]
fn same_numbers_as_the_seed_script_across_many_batches() {
    let text = generated(60_000);
    let python = golden_report("generated-60000.report.txt", &text);
    let mut analyzer = Analyzer::default();
    analyzer.feed_reader(std::io::Cursor::new(text.as_bytes())).unwrap();
    let ours = analyzer.report().to_text();
    assert!(ours.starts_with(&python), "--- python ---\n{python}\n--- portcullis ---\n{ours}");
    assert!(python.contains("Parsed 60000 log entries"));
    assert!(python.contains("=== Gateway Processing Overhead ==="));
}

#[test]
fn json_round_trips_and_html_has_one_svg_per_route() {
    let mut analyzer = Analyzer::default();
    analyzer.feed_reader(std::io::Cursor::new(synthetic())).unwrap();
    let report = analyzer.report();
    let back: Report = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back, report);
    let html = report.to_html();
    assert!(html.starts_with("<!doctype html>"));
    assert_eq!(html.matches("<svg class=\"histogram\"").count(), report.routes.len());
    assert_eq!(report.routes.len(), 2);
    assert_eq!(html.matches("<svg class=\"timeline\"").count(), 1);
    assert!(!html.contains("<script"), "self-contained and static");
}

#[test]
fn since_and_until_select_a_window() {
    let window = Window {
        since: Some(humantime::parse_rfc3339("2026-11-28T06:20:00Z").unwrap()),
        until: Some(humantime::parse_rfc3339("2026-11-28T06:21:00Z").unwrap()),
    };
    let mut analyzer = Analyzer::with_window(window);
    analyzer.feed_reader(std::io::Cursor::new(synthetic())).unwrap();
    let report = analyzer.report();
    assert_eq!(report.parsed, 40, "only the 429 minute");
    assert!(report.auth_failures.is_empty());
    assert_eq!(report.outside_window, 150 + 30 + 57 + 1);
}

#[test]
fn the_example_binary_reads_files_gz_and_stdin() {
    use std::io::Write;
    let bin = crate::config::example("analyze_logs");
    let plain = temp_path("a.log");
    std::fs::write(&plain, synthetic()).unwrap();
    let gz = temp_path("b.log.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    encoder.write_all(synthetic().as_bytes()).unwrap();
    encoder.finish().unwrap();
    let out = std::process::Command::new(&bin).arg(&plain).arg(&gz).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.parsed, 2 * (150 + 30 + 40 + 57 + 1));
    let mut child = std::process::Command::new(&bin)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(synthetic().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Parsed 278 log entries"));
    let bad = std::process::Command::new(&bin).arg("--since").arg("yesterday").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&gz);
}

/// Overheads whose exact decimal difference is the same (0.3 − 0.1 and 0.5 − 0.3 are both 0.2,
/// yet as doubles 0.19999999999999998 and 0.2) at every magnitude of upstream latency: the p50,
/// p95 and p99 land inside runs of such near-equal doubles, and must be the very doubles
/// Python's `statistics.quantiles` returns (compared bit for bit, not as printed).
#[test]
fn overhead_quantiles_are_bit_exact_among_equal_decimal_differences() {
    let mut text = String::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..30_000u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Upstream latencies at microsecond resolution from 0.001 ms to ~100 s, so the sums
        // cross many binades; three decimal differences, weighted so the cut points fall inside
        // one difference's run.
        let up_us = (state >> 20) % 10u64.pow(1 + (state % 8) as u32);
        let diff_us = [100, 200, 200, 200, 200, 200, 300, 300, 300, 300][(i % 10) as usize];
        let gw_us = up_us + diff_us;
        text.push_str(&format!(
            "{{\"status\":200,\"route_name\":\"r\",\"upstream_latency_ms\":{}.{:03},\"gateway_latency_ms\":{}.{:03}}}\n",
            up_us / 1000,
            up_us % 1000,
            gw_us / 1000,
            gw_us % 1000
        ));
    }
    // Python's `statistics.quantiles` on these overheads: the number of distinct doubles, then
    // the p50, p95 and p99 bit patterns. Re-derived from Python where the seed script is.
    let python: [u64; 4] = GOLDEN_QUANTILES;
    if seed_script().is_some() {
        let fresh = python_quantiles(&text);
        assert_eq!(fresh, python, "Python's quantiles differ from the kept ones");
    }
    assert!(python[0] > 20, "many distinct doubles for three decimal differences: {}", python[0]);
    let python = [python[1], python[2], python[3]].map(f64::from_bits);

    let mut analyzer = Analyzer::default();
    analyzer.feed_reader(std::io::Cursor::new(text.as_bytes())).unwrap();
    let overhead = analyzer.report().overhead.unwrap();
    let ours = [overhead.p50, overhead.p95, overhead.p99];
    assert_eq!(ours.map(f64::to_bits), python.map(f64::to_bits), "{ours:?} vs {python:?}");
    // Not all on the plain decimal: the runs really hold several doubles.
    assert!(ours.iter().any(|q| ![0.1, 0.2, 0.3].contains(q)));
    assert_eq!(overhead.n, 30_000);
}

const GOLDEN_QUANTILES: [u64; 4] = [70, 4596373779694328320, 4599075939470753792, 4599075939470802944];

/// Python's distinct-overhead count and p50/p95/p99 (as bit patterns) for `log`.
fn python_quantiles(log: &str) -> [u64; 4] {
    let path = temp_path("analyze-same-difference.log");
    std::fs::write(&path, log).unwrap();
    let script = "import json, struct, sys\nfrom statistics import quantiles\nd = []\nfor line in open(sys.argv[1]):\n    e = json.loads(line)\n    o = float(e['gateway_latency_ms']) - float(e['upstream_latency_ms'])\n    if o >= 0:\n        d.append(o)\nq = quantiles(d, n=100)\nbits = lambda x: struct.unpack('<Q', struct.pack('<d', x))[0]\nprint(len(set(d)), bits(q[49]), bits(q[94]), bits(q[98]))\n";
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let values: Vec<u64> = printed.split_whitespace().map(|v| v.parse().unwrap()).collect();
    values.try_into().unwrap_or_else(|v| panic!("unexpected Python output {v:?}"))
}

//! The access-log analyzer.
//!
//! ```text
//! cargo run --release --features analyze --example analyze_logs -- access.log [more.log.gz ...]
//! cat access.log | cargo run --release --features analyze --example analyze_logs -- -
//!     --since 2026-11-28T06:00:00Z --until 2026-11-28T07:00:00Z   only lines in that window
//!     --json                                                     the report as JSON
//!     --html report.html                                         also write a page with charts
//! ```
//!
//! Prints the report the seed's `analyze_gateway_logs.py` prints, with the same numbers.

use std::fs::File;
use std::io::{BufReader, Read};
use std::process::ExitCode;

use portcullis::analyze::{Analyzer, Window};

fn usage() -> &'static str {
    "usage: analyze_logs [--since RFC3339] [--until RFC3339] [--json] [--html FILE] [FILE|- ...]"
}

/// The analyzer reads in large blocks itself: no `BufReader` in between.
fn open(path: &str) -> std::io::Result<Box<dyn Read>> {
    if path == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let file = File::open(path)?;
    if path.ends_with(".gz") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, file))))
    } else {
        Ok(Box::new(file))
    }
}

fn main() -> ExitCode {
    let mut window = Window::default();
    let (mut json, mut html, mut files) = (false, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut time = |flag: &str| -> Result<std::time::SystemTime, String> {
            let value = args.next().ok_or(format!("{flag} needs a timestamp"))?;
            humantime::parse_rfc3339_weak(&value).map_err(|e| format!("{flag} {value}: {e}"))
        };
        let parsed = match arg.as_str() {
            "--since" => time("--since").map(|t| window.since = Some(t)),
            "--until" => time("--until").map(|t| window.until = Some(t)),
            "--json" => {
                json = true;
                Ok(())
            }
            "--html" => args.next().map(|f| html = Some(f)).ok_or("--html needs a file name".to_owned()),
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            flag if flag.starts_with("--") => Err(format!("unknown option {flag}")),
            _ => {
                files.push(arg);
                Ok(())
            }
        };
        if let Err(message) = parsed {
            eprintln!("error: {message}\n{}", usage());
            return ExitCode::from(2);
        }
    }
    if files.is_empty() {
        files.push("/var/log/kong/access.log".to_owned());
    }
    let mut analyzer = Analyzer::with_window(window);
    for path in &files {
        let result = open(path).and_then(|reader| analyzer.feed_reader(reader));
        if let Err(error) = result {
            eprintln!("error: {path}: {error}");
            return ExitCode::FAILURE;
        }
    }
    let report = analyzer.report();
    if let Some(path) = html {
        if let Err(error) = std::fs::write(&path, report.to_html()) {
            eprintln!("error: {path}: {error}");
            return ExitCode::FAILURE;
        }
    }
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::SUCCESS
}

//! Config errors: one line naming the file, the path in it and what was expected, and a non-zero
//! exit of the example binary before it listens.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

pub(crate) fn example_binary() -> PathBuf {
    example("gateway")
}

/// An example binary that `cargo test` built beside this test binary, never a stale one: a run
/// that did not build examples (`cargo test --test it`) may leave an older binary there, which
/// would test code that is no longer the crate's.
pub(crate) fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/it-<hash> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let bin = dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("{} not built (cargo test --all-features builds examples)", bin.display())
    });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let newest = ["src", "examples", "Cargo.toml", "Cargo.lock"]
        .iter()
        .filter_map(|part| newest_modification(&root.join(part)))
        .max();
    if let Some(newest) = newest {
        assert!(
            built >= newest,
            "{} is older than the crate's sources: run `cargo test --all-features` (it builds examples)",
            bin.display()
        );
    }
    bin
}

/// The latest modification time of `path` or of any file under it.
fn newest_modification(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path).ok()?.flatten().filter_map(|entry| newest_modification(&entry.path())).max()
}

fn run_with(yaml: Option<&str>) -> (i32, String) {
    let path = match yaml {
        Some(text) => {
            let path = temp_path("gw.yaml");
            std::fs::write(&path, text).unwrap();
            path
        }
        None => temp_path("missing.yaml"),
    };
    let out = Command::new(example_binary()).arg("--config").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr.replace(&path.display().to_string(), "<file>"))
}

#[test]
fn each_config_error_is_one_line_with_its_location() {
    let route = "services:\n- name: s\n  url: http://127.0.0.1:1\n  routes:\n  - name: r\n    paths: [/x]\n";
    let cases: Vec<(Option<String>, &str, &str)> = vec![
        (None, "<file>", "cannot read"),
        (Some("_format_version: \"3.0\"\nservices: [\n".into()), "<file>", "line"),
        (
            Some(format!("_format_version: \"3.0\"\n{}", route.replace("paths: [/x]", "pathz: [/x]"))),
            "services[0].routes[0]",
            "unknown field `pathz`",
        ),
        (
            Some(format!(
                "_format_version: \"3.0\"\n{}",
                route.replace("url:", "connect_timeout: 5 parsecs\n  url:")
            )),
            "services[0].connect_timeout",
            "duration",
        ),
        (
            Some(format!("_format_version: \"3.0\"\n{route}    plugins:\n    - name: no-such-plugin\n")),
            "services[0].routes[0].plugins[0].name",
            "unknown plugin `no-such-plugin`",
        ),
    ];
    for (yaml, location, expected) in cases {
        let (code, stderr) = run_with(yaml.as_deref());
        assert_ne!(code, 0, "{yaml:?} exited 0");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "not one line: {stderr}");
        assert!(lines[0].contains("<file>"), "no file name: {stderr}");
        assert!(lines[0].contains(location), "no location {location}: {stderr}");
        assert!(lines[0].contains(expected), "no `{expected}`: {stderr}");
    }
}

#[tokio::test]
async fn example_without_arguments_serves_the_demo_route() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(example_binary())
        .env("PORTCULLIS_DEMO_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_DEMO_ADMIN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = String::new();
    let listening = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if let Some(url) = line.strip_prefix("portcullis listening on ") {
                return Some(url.to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(base)) = listening else {
        let mut err = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await;
        panic!("the demo gateway did not start: {banner}{err}");
    };
    let res = get(&format!("{base}/echo/hello?name=portcullis")).await;
    assert_eq!(res.status, 200);
    let body = res.json();
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["query"], "name=portcullis");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    let res = get(&format!("{base}/users/42")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["path"], "/users/42");
    child.kill().await.unwrap();
}

/// The axum examples serve requests to themselves and assert on the answers; they must pass.
#[test]
fn the_axum_examples_run_and_check_themselves() {
    let mut names = vec!["transform_axum"];
    if cfg!(feature = "jwt") {
        names.push("auth_axum");
    }
    for name in names {
        let out = Command::new(example(name)).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

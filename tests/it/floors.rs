//! Imports point down the floors (issue 14 item 2). The floor table is written once, in the crate
//! docs of `src/lib.rs` ("## Floors"); this test reads it, then reads every `src/**/*.rs` (leaving
//! out `#[cfg(test)]` items and modules, comments, doc comments and string literals) and checks
//! each `use crate::…` and each `crate::x::…` path:
//!
//! - a path to a higher floor fails, unless [`NOT_YET`] names it;
//! - a module on the "tools" floor (the offline analyzer) imports nothing from the crate;
//! - a path from one layer to another fails, unless [`BY_DESIGN`] names it with its reason;
//! - the remaining imports between top-level modules form no circle;
//! - an entry of [`NOT_YET`] or [`BY_DESIGN`] that no import uses any more fails too, so both
//!   lists only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Imports from one layer into another that the design wants (ARCHITECTURE.md "Floors": a layer
/// may import a layer it works with by design). `(from module, imported path prefix, why)`.
const BY_DESIGN: &[(&str, &str, &str)] = &[
    (
        "proxy",
        "resilience::balance",
        "the proxy picks each attempt's host from the host set and load balancer of `resilience`, \
         which the retry layer wraps around it (resilience/mod.rs: \"the proxy with its host set, \
         load balancer and outlier detection\")",
    ),
    (
        "proxy",
        "resilience::classify",
        "the proxy charges the chosen host with the one response classifier's `Outcome` (outlier \
         detection), the same classification the breaker and retries use",
    ),
];

/// Upward or layer-to-layer imports that are still there and will go: each names what is left to
/// do. Remove an entry when its import goes (the test fails on an entry nothing uses).
const NOT_YET: &[(&str, &str, &str)] = &[];

/// The floors from `src/lib.rs`, lowest first: `(floor name, its top-level modules)`.
fn floors(root: &Path) -> Vec<(String, Vec<String>)> {
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let mut rows = Vec::new();
    let mut in_section = false;
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        let doc = doc.trim();
        if doc.starts_with("## ") {
            in_section = doc == "## Floors";
            continue;
        }
        if !in_section || !doc.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = doc.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2 || cells[0] == "floor" || cells[0].starts_with('-') {
            continue;
        }
        let modules: Vec<String> = cells[1].split('`').skip(1).step_by(2).map(str::to_owned).collect();
        rows.push((cells[0].to_owned(), modules));
    }
    assert!(rows.len() >= 5, "the \"## Floors\" table of src/lib.rs has {} rows", rows.len());
    rows.reverse();
    rows
}

/// `src` with comments (doc comments too), string and char literals blanked; newlines are kept,
/// so byte offsets still give the right line.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for byte in &mut out[from..to] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let ident = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !ident(i) && (b[i] == b'r' || b[i..].starts_with(b"br")) && {
            let r = if b[i] == b'b' { i + 1 } else { i };
            let hashes = b[r + 1..].iter().take_while(|&&c| c == b'#').count();
            b.get(r + 1 + hashes) == Some(&b'"')
        } {
            let r = if b[i] == b'b' { i + 1 } else { i };
            let hashes = b[r + 1..].iter().take_while(|&&c| c == b'#').count();
            let start = r + 2 + hashes;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = b[start..].windows(close.len()).position(|w| w == close).map_or(b.len(), |n| start + n);
            let end = (end + close.len()).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', 'é', '\n', '\'', '\u{..}'), not a lifetime ('a).
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[(i + 3).min(b.len())..].iter().position(|&c| c == b'\'').map(|n| i + 3 + n)
            } else {
                let width = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + width) == Some(&b'\'')).then_some(i + 1 + width)
            };
            match close {
                Some(close) => {
                    blank(&mut out, i, close + 1);
                    i = close + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The index just after the brace that closes the one at `open`.
fn matching_brace(code: &[u8], open: usize) -> usize {
    let mut depth = 0;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Blanks every item under `#[cfg(test)]` (or `#[cfg(all(test, …))]`); returns the names of the
/// test modules declared as `mod name;`, whose files are left out.
fn without_tests(code: &mut String) -> Vec<String> {
    let mut files = Vec::new();
    let mut from = 0;
    while let Some(at) = ["#[cfg(test)]", "#[cfg(all(test"]
        .iter()
        .filter_map(|attr| code[from..].find(attr).map(|n| from + n))
        .min()
    {
        let bytes = code.as_bytes();
        let semi = bytes[at..].iter().position(|&c| c == b';').map(|n| at + n);
        let brace = bytes[at..].iter().position(|&c| c == b'{').map(|n| at + n);
        // The attribute itself ends at its `]`; the item ends at its `;` or its closing brace.
        let attr_end = at + code[at..].find(']').unwrap_or(0) + 1;
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (Some(s), None) => s + 1,
            (_, Some(b)) => matching_brace(bytes, b),
            (None, None) => code.len(),
        };
        let item = &code[attr_end..end];
        let words: Vec<&str> =
            item.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        let declared = words.iter().position(|w| *w == "mod").and_then(|pos| words.get(pos + 1));
        if let (true, Some(name)) = (item.trim_end().ends_with(';'), declared) {
            files.push((*name).to_owned());
        }
        let blanked: String = code[at..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
        code.replace_range(at..end, &blanked);
        from = end;
    }
    files
}

/// Every path after `crate::` at `code[at..]`, expanded (`{a::X, b::{Y, Z}}` gives `a::X`,
/// `b::Y`, `b::Z`).
fn paths_at(code: &str, prefix: &str, out: &mut Vec<String>) -> usize {
    let bytes = code.as_bytes();
    let mut i = 0;
    let mut path = prefix.to_owned();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            i += 1;
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return i + 1;
                }
                i += paths_at(&code[i..], &path, out);
            }
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if start == i {
            // `*`, or a path that ended with `::` before something else.
            out.push(path);
            return i;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(&code[start..i]);
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if code[j..].starts_with("::") {
            i = j + 2;
        } else {
            out.push(path);
            // Skip an `as name` rename.
            let rest = &code[j..];
            if rest.starts_with("as") && rest[2..].starts_with(|c: char| c.is_whitespace()) {
                let name = rest[2..].trim_start();
                let len = name.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(name.len());
                return code.len() - name.len() + len;
            }
            return i;
        }
    }
}

/// One `crate::` path in the sources.
#[derive(Debug)]
struct Import {
    file: String,
    line: usize,
    from: String,
    path: String,
}

/// Every `crate::` path outside tests in `src/`, by the top-level module it is in.
fn imports(root: &Path) -> Vec<Import> {
    let lib = fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    // `crate::Body` and the like: the crate root's re-exports, by the module they come from.
    let root_items: BTreeMap<String, String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub use ")?.strip_suffix(';')?.split_once("::"))
        .map(|(module, item)| (item.to_owned(), module.to_owned()))
        .collect();
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut test_files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut sources = Vec::new();
    for path in files {
        let mut code = code_only(&fs::read_to_string(&path).expect("source file"));
        let children = if path.ends_with("mod.rs") || path.ends_with("lib.rs") {
            path.parent().expect("parent").to_path_buf()
        } else {
            path.with_extension("")
        };
        for name in without_tests(&mut code) {
            test_files.insert(children.join(format!("{name}.rs")));
            test_files.insert(children.join(name).join("mod.rs"));
        }
        sources.push((path, code));
    }
    let mut found = Vec::new();
    for (path, code) in sources {
        let rel = path.strip_prefix(root.join("src")).expect("under src");
        if test_files.iter().any(|t| path.starts_with(t.with_extension("")) || path == *t)
            || rel == Path::new("lib.rs")
        {
            continue;
        }
        let from = rel.components().next().expect("a component").as_os_str().to_string_lossy();
        let from = from.trim_end_matches(".rs").to_owned();
        let bytes = code.as_bytes();
        let mut at = 0;
        while let Some(n) = code[at..].find("crate::") {
            let start = at + n;
            at = start + "crate::".len();
            if start > 0
                && (bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b'$'))
            {
                continue;
            }
            let mut paths = Vec::new();
            paths_at(&code[at..], "", &mut paths);
            let line = code[..start].matches('\n').count() + 1;
            for p in paths {
                let first = p.split("::").next().unwrap_or("");
                let p = match root_items.get(first) {
                    Some(module) => format!("{module}::{p}"),
                    None => p,
                };
                found.push(Import { file: rel.display().to_string(), line, from: from.clone(), path: p });
            }
        }
    }
    found
}

fn listed<'a>(list: &'a [(&str, &str, &str)], import: &Import) -> Option<&'a (&'a str, &'a str, &'a str)> {
    list.iter().find(|(from, prefix, _)| {
        *from == import.from && (import.path == *prefix || import.path.starts_with(&format!("{prefix}::")))
    })
}

#[test]
fn imports_point_down_the_floors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let floors = floors(root);
    let floor_of: BTreeMap<&str, usize> = floors
        .iter()
        .enumerate()
        .flat_map(|(level, (_, modules))| modules.iter().map(move |m| (m.as_str(), level)))
        .collect();
    let layers = floors.iter().position(|(name, _)| name == "layers").expect("a \"layers\" floor");
    let mut wrong = Vec::new();
    let mut used = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for import in imports(root) {
        let to = import.path.split("::").next().unwrap_or("").to_owned();
        if to == import.from {
            continue;
        }
        let (Some(&from_floor), Some(&to_floor)) =
            (floor_of.get(import.from.as_str()), floor_of.get(to.as_str()))
        else {
            wrong.push(format!(
                "{}:{}: `crate::{}` — `{}` or `{to}` is on no floor of src/lib.rs",
                import.file, import.line, import.path, import.from
            ));
            continue;
        };
        if floors[from_floor].0 == "tools" {
            wrong.push(format!(
                "{}:{}: `crate::{}` — {} is a tool: it imports nothing from the crate",
                import.file, import.line, import.path, import.from
            ));
            continue;
        }
        let across_layers = from_floor == layers && to_floor == layers;
        if to_floor > from_floor || across_layers {
            let list = if across_layers { [BY_DESIGN, NOT_YET] } else { [NOT_YET, &[]] };
            if let Some(entry) = list.iter().find_map(|l| listed(l, &import)) {
                used.insert((entry.0, entry.1));
                continue;
            }
            let what = if across_layers { "another layer" } else { floors[to_floor].0.as_str() };
            wrong.push(format!(
                "{}:{}: `crate::{}` — {} ({}) imports {what}",
                import.file, import.line, import.path, import.from, floors[from_floor].0
            ));
            continue;
        }
        edges.entry(import.from.clone()).or_default().insert(to);
    }
    for (from, prefix, why) in BY_DESIGN.iter().chain(NOT_YET) {
        assert!(!why.is_empty());
        if !used.contains(&(*from, *prefix)) {
            wrong.push(format!("allowed `{from}` -> `{prefix}` is no longer imported: remove its entry"));
        }
    }
    assert!(wrong.is_empty(), "imports that break the floors of src/lib.rs:\n{}", wrong.join("\n"));

    // No circle among what remains (the allowed-for-now imports are left out: they will go).
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            panic!("import circle: {} -> {node}", stack[at..].join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, stack, done);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done);
    }
}

/// The scanner itself: it sees through groups and renames, and not into comments, strings or
/// test modules.
#[test]
fn the_scanner_reads_use_trees_and_skips_tests_and_text() {
    let mut paths = Vec::new();
    paths_at("{a::X, b::{c::Y, Z as W}, d};", "", &mut paths);
    assert_eq!(paths, ["a::X", "b::c::Y", "b::Z", "d"]);

    let src = "use crate::a::B; // crate::c::D\n/// [x](crate::e::F)\nlet s = \"crate::g\";\nlet c = '\"';\n\
               let r = r#\"crate::h\"#;\nfn f<'a>(x: &'a str) { crate::i::j(x) }\n\
               #[cfg(test)]\nmod tests { use crate::k::L; }\n#[cfg(test)]\nmod more;\nuse crate::m::N;\n";
    let mut code = code_only(src);
    assert_eq!(code.lines().count(), src.lines().count(), "lines are kept");
    assert_eq!(without_tests(&mut code), ["more"]);
    let seen: Vec<&str> = code.match_indices("crate::").map(|(at, _)| &code[at + 7..at + 8]).collect();
    assert_eq!(seen, ["a", "i", "m"]);
}

//! [`ConfigError`]: one line naming the file, the path inside it and what was expected.

use std::fmt;

use serde_path_to_error::Segment;

/// Why a config file was rejected. Every error names its origin (the file, or `<string>`), the
/// path inside the document (`services[0].routes[1].paths[0]`), and what was expected; its
/// `Display` is a single line:
///
/// ```text
/// gateway.yaml: services[0].routes[0]: unknown field `pathz`, expected one of `name`, `paths`, ... (line 7, column 5)
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {}{message}{}", PathPrefix(path), Position(*position))]
pub struct ConfigError {
    kind: ConfigErrorKind,
    origin: String,
    path: String,
    message: String,
    position: Option<(usize, usize)>,
    #[source]
    source: Option<std::io::Error>,
}

/// What sort of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Read,
    /// The YAML is malformed, or does not fit the schema (unknown key, wrong type, bad value).
    Parse,
    /// The document fits the schema but is inconsistent (duplicate names, dangling references,
    /// a route without any matcher, ...).
    Invalid,
    /// A key or plugin portcullis knows about but does not implement yet.
    Unsupported,
}

// === impl ConfigError ===

impl ConfigError {
    /// What sort of problem this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The file name, or the origin given to [`Config::from_yaml`](super::Config::from_yaml).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The path inside the document (`services[0].routes[1].paths[0]`); empty for the whole
    /// document (syntax errors, unreadable files).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What was wrong and what was expected, without origin, path or position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based line, when the YAML parser knows it.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column, when the YAML parser knows it.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    pub(crate) fn read(origin: &str, err: std::io::Error) -> Self {
        // `No such file or directory (os error 2)` -> `No such file or directory`.
        let text = err.to_string();
        let text = match text.rfind(" (os error ") {
            Some(at) => text[..at].to_owned(),
            None => text,
        };
        Self {
            kind: ConfigErrorKind::Read,
            origin: origin.to_owned(),
            path: String::new(),
            message: format!("cannot read: {text}"),
            position: None,
            source: Some(err),
        }
    }

    pub(crate) fn parse(origin: &str, err: serde_path_to_error::Error<serde_yaml_ng::Error>) -> Self {
        let full_path = err.path().clone();
        let mut segments: Vec<_> = full_path.iter().collect();
        let inner = err.into_inner();
        let position = inner.location().map(|at| (at.line(), at.column()));
        let mut message = inner.to_string();
        // serde_yaml_ng writes its own position (` at line 3 column 5`) and path (`a.b[0]: `) into
        // the message; both are reported separately.
        if let Some((line, column)) = position {
            message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
        }
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && render(&segments).starts_with(prefix) {
                message = rest.to_owned();
            }
        }
        // A syntax error leaves the path where parsing gave up: cut at the unknown part.
        if let Some(unknown) = segments.iter().position(|s| matches!(s, Segment::Unknown)) {
            segments.truncate(unknown);
        }
        // An unknown key belongs to the mapping it is in: `routes[0]: unknown field `pathz``.
        if let Some(Segment::Map { key }) = segments.last() {
            if message.starts_with(&format!("unknown field `{key}`")) {
                segments.pop();
            }
        }
        Self {
            kind: ConfigErrorKind::Parse,
            origin: origin.to_owned(),
            path: render(&segments),
            message: one_line(&message),
            position,
            source: None,
        }
    }

    /// An inconsistency found while building, at `path`.
    pub(crate) fn invalid(origin: &str, path: String, message: impl Into<String>) -> Self {
        Self::from_invalid(origin, Invalid::new(path, message))
    }

    /// A key portcullis knows but does not implement yet, at `path`.
    pub(crate) fn unsupported(origin: &str, path: String, message: impl Into<String>) -> Self {
        Self::from_invalid(origin, Invalid::unsupported(path, message))
    }

    pub(crate) fn from_invalid(origin: &str, invalid: Invalid) -> Self {
        Self {
            kind: invalid.kind,
            origin: origin.to_owned(),
            path: invalid.path,
            message: one_line(&invalid.message),
            position: None,
            source: None,
        }
    }
}

/// A validation failure before the origin is known: the path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) kind: ConfigErrorKind,
    pub(crate) path: String,
    pub(crate) message: String,
}

impl Invalid {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ConfigErrorKind::Invalid, path: path.into(), message: message.into() }
    }

    pub(crate) fn unsupported(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ConfigErrorKind::Unsupported, path: path.into(), message: message.into() }
    }
}

/// `services[0].routes[1].paths[0]`; empty for the document root.
fn render(segments: &[&Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Unknown => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push('?');
            }
        }
    }
    path
}

/// Keeps `Display` to one line whatever the input held.
fn one_line(text: &str) -> String {
    text.replace('\n', "\\n").replace('\r', "\\r")
}

struct PathPrefix<'a>(&'a str);

impl fmt::Display for PathPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, "{}: ", self.0) }
    }
}

struct Position(Option<(usize, usize)>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, " (line {line}, column {column})"),
            None => Ok(()),
        }
    }
}

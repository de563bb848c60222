//! `name=value&...` lists (query strings and `application/x-www-form-urlencoded` bodies), kept in
//! their original order, untouched pairs re-emitted byte for byte.

use std::borrow::Cow;

/// One `name=value` pair: its raw text while untouched, else the decoded name and new value.
#[derive(Debug, Clone)]
struct Pair<'a> {
    name: Cow<'a, str>,
    raw: Option<&'a str>,
    value: Cow<'a, str>,
}

/// An ordered list of pairs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pairs<'a> {
    pairs: Vec<Pair<'a>>,
    changed: bool,
}

impl<'a> Pairs<'a> {
    pub(crate) fn parse(text: &'a str) -> Self {
        let pairs = text
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|raw| {
                let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
                Pair { name: decode(name), raw: Some(raw), value: decode(value) }
            })
            .collect();
        Self { pairs, changed: false }
    }

    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|p| p.name == name)
    }

    pub(crate) fn remove(&mut self, name: &str) {
        let before = self.pairs.len();
        self.pairs.retain(|p| p.name != name);
        self.changed |= self.pairs.len() != before;
    }

    /// Renames every `old` pair in place.
    pub(crate) fn rename(&mut self, old: &str, new: &str) {
        for pair in self.pairs.iter_mut().filter(|p| p.name == old) {
            pair.name = Cow::Owned(new.to_owned());
            pair.raw = None;
            self.changed = true;
        }
    }

    /// Sets the first `name` pair to `value` (dropping the others), only if there is one.
    pub(crate) fn replace(&mut self, name: &str, value: &str) {
        let Some(first) = self.pairs.iter().position(|p| p.name == name) else { return };
        self.pairs[first].value = Cow::Owned(value.to_owned());
        self.pairs[first].raw = None;
        let mut index = 0;
        self.pairs.retain(|p| {
            index += 1;
            index - 1 <= first || p.name != name
        });
        self.changed = true;
    }

    /// Adds `name=value` at the end, only if there is no `name` yet.
    pub(crate) fn add(&mut self, name: &str, value: &str) {
        if !self.has(name) {
            self.append(name, value);
        }
    }

    /// Adds `name=value` at the end.
    pub(crate) fn append(&mut self, name: &str, value: &str) {
        self.pairs.push(Pair {
            name: Cow::Owned(name.to_owned()),
            raw: None,
            value: Cow::Owned(value.to_owned()),
        });
        self.changed = true;
    }

    /// Appends the pairs of a form body (`a=1&b=2`): a pair whose text a query may hold as is
    /// keeps it byte for byte, another is re-encoded.
    pub(crate) fn extend_form(&mut self, form: &'a str) {
        for raw in form.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = raw.split_once('=').unwrap_or((raw, ""));
            let raw = raw.bytes().all(query_safe).then_some(raw);
            self.pairs.push(Pair { name: decode(name), raw, value: decode(value) });
            self.changed = true;
        }
    }

    /// The list as text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for pair in &self.pairs {
            if !out.is_empty() {
                out.push('&');
            }
            match pair.raw {
                Some(raw) => out.push_str(raw),
                None => {
                    encode_into(&mut out, &pair.name);
                    out.push('=');
                    encode_into(&mut out, &pair.value);
                }
            }
        }
        out
    }
}

/// The decoded value of the first `name` pair in `text`.
pub(crate) fn first_value<'a>(text: &'a str, name: &str) -> Option<Cow<'a, str>> {
    text.split('&').find_map(|raw| {
        let (n, v) = raw.split_once('=').unwrap_or((raw, ""));
        (!raw.is_empty() && decode(n) == name).then(|| decode(v))
    })
}

/// Percent-decoding with `+` as a space (form encoding); invalid UTF-8 is replaced.
pub(crate) fn decode(text: &str) -> Cow<'_, str> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A byte a query may hold literally inside one `name=value` pair (RFC 3986 `pchar`, `/`, `?`).
fn query_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$'()*+,;=:@/?%".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_into(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_kept_and_untouched_pairs_are_byte_for_byte() {
        let mut q = Pairs::parse("b=1&a=x%2Fy&flag&a=2&c=3");
        q.remove("c");
        q.add("b", "ignored");
        q.add("new", "a b&c");
        q.append("b", "again");
        q.replace("a", "z");
        q.rename("flag", "f");
        assert_eq!(q.encode(), "b=1&a=z&f=&new=a%20b%26c&b=again");
        assert!(q.changed());
        let untouched = Pairs::parse("x=%7e+1&y");
        assert_eq!(untouched.encode(), "x=%7e+1&y");
        assert!(!untouched.changed());
    }

    #[test]
    fn form_pairs_join_a_query() {
        let mut q = Pairs::parse("a=0&keep=%7E");
        let body = "a=1&b=x+y%21&flag&&raw=a b&\u{e9}=\u{e9}";
        q.extend_form(body);
        assert!(q.changed());
        assert_eq!(q.encode(), "a=0&keep=%7E&a=1&b=x+y%21&flag&raw=a%20b&%C3%A9=%C3%A9");
        let mut unchanged = Pairs::parse("a=0");
        unchanged.extend_form("");
        assert!(!unchanged.changed());
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("a+b%20c%zz%4"), "a b c%zz%4");
        assert_eq!(first_value("q=1&p1=any%3Athing&q=2", "p1").as_deref(), Some("any:thing"));
        assert_eq!(first_value("q=1", "x"), None);
    }
}

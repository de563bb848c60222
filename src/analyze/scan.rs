//! A fast, strict reader for one access-log line: walks the top-level JSON object once, keeps
//! the few fields the report needs, validates everything else without building it, and gives up
//! (`None`) on anything unusual — escapes in a kept string, duplicate kept keys — so the caller
//! can fall back to `serde_json` for that line. Lines it accepts are exactly the JSON objects
//! Python's `json.loads` accepts.

/// A kept value: absent, `null`, a string (raw bytes, no escapes), a number (its text), or
/// anything else (`true`, an object, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(&'a str),
    Num(&'a str),
    /// A string with escapes: the caller needs it decoded, so the slow path takes the line.
    Escaped,
    /// `true`, `false`, an array or an object.
    Other,
}

/// The fields of one line the report reads.
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    pub(super) timestamp: Field<'a>,
    pub(super) status: Field<'a>,
    pub(super) consumer_id: Field<'a>,
    pub(super) client_ip: Field<'a>,
    pub(super) route_name: Field<'a>,
    pub(super) upstream_latency_ms: Field<'a>,
    pub(super) gateway_latency_ms: Field<'a>,
}

/// Whether the line failed as JSON (count it malformed) or only this reader gave up.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Miss {
    Invalid,
    Unsure,
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Result<(), Miss> {
        self.ws();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Miss::Invalid)
        }
    }

    /// A string; `Ok(Some(text))` when it has no escapes, `Ok(None)` when it has valid ones.
    fn string(&mut self) -> Result<Option<&'a str>, Miss> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            // Jump to the next quote, backslash or control character (invalid in a string).
            self.at = next_special(self.bytes, self.at);
            match self.bytes.get(self.at) {
                None => return Err(Miss::Invalid),
                Some(b'"') => {
                    self.at += 1;
                    return Ok((!escaped).then(|| &self.text[start..self.at - 1]));
                }
                Some(b'\\') => {
                    escaped = true;
                    match self.bytes.get(self.at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 2,
                        Some(b'u') => {
                            let hex = self.bytes.get(self.at + 2..self.at + 6).ok_or(Miss::Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Miss::Invalid);
                            }
                            self.at += 6;
                        }
                        _ => return Err(Miss::Invalid),
                    }
                }
                // A control character.
                Some(_) => return Err(Miss::Invalid),
            }
        }
    }

    /// A number per the JSON grammar; returns its text.
    fn number(&mut self) -> Result<&'a str, Miss> {
        let start = self.at;
        let digits = |c: &mut Self| {
            let from = c.at;
            while c.bytes.get(c.at).is_some_and(u8::is_ascii_digit) {
                c.at += 1;
            }
            c.at - from
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.bytes.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(Miss::Invalid),
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return Err(Miss::Invalid);
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(Miss::Invalid);
            }
        }
        Ok(&self.text[start..self.at])
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Miss> {
        if self.bytes.get(self.at..self.at + word.len()) == Some(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Miss::Invalid)
        }
    }

    /// Any value; nested containers are validated and skipped.
    fn value(&mut self, depth: u32) -> Result<Field<'a>, Miss> {
        if depth > 128 {
            return Err(Miss::Unsure);
        }
        self.ws();
        match self.bytes.get(self.at) {
            Some(b'"') => Ok(self.string()?.map_or(Field::Escaped, Field::Str)),
            Some(b'n') => self.literal(b"null").map(|()| Field::Null),
            Some(b't') => self.literal(b"true").map(|()| Field::Other),
            Some(b'f') => self.literal(b"false").map(|()| Field::Other),
            Some(b'-' | b'0'..=b'9') => self.number().map(Field::Num),
            Some(b'[') => {
                self.at += 1;
                self.ws();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Field::Other);
                }
                loop {
                    self.value(depth + 1)?;
                    self.ws();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Field::Other);
                        }
                        _ => return Err(Miss::Invalid),
                    }
                }
            }
            Some(b'{') => {
                self.object(depth + 1, &mut ignore)?;
                Ok(Field::Other)
            }
            _ => Err(Miss::Invalid),
        }
    }

    /// An object; `keep(key, value)` sees every top-level member (keys without escapes only).
    fn object<F>(&mut self, depth: u32, keep: &mut F) -> Result<(), Miss>
    where
        F: FnMut(&'a str, Field<'a>) -> Result<(), Miss>,
    {
        self.eat(b'{')?;
        self.ws();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            let value = self.value(depth)?;
            match key {
                Some(key) => keep(key, value)?,
                // An escaped key could spell a field we keep.
                None if depth == 0 => return Err(Miss::Unsure),
                None => {}
            }
            self.ws();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Miss::Invalid),
            }
        }
    }
}

/// Keeps no member of a nested object.
fn ignore<'a>(_: &'a str, _: Field<'a>) -> Result<(), Miss> {
    Ok(())
}

/// The index of the first `"`, `\\` or control character at or after `from` (`bytes.len()`
/// when there is none): eight bytes at a time, as most strings in a log line are short and a
/// SIMD search's setup would cost more than it saves.
fn next_special(bytes: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        // A byte's high bit is set where it is zero (or below 0x20); only bytes above the
        // lowest such byte can be false positives, and the lowest is all this needs.
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let found = found & HIGH;
        if found != 0 {
            return at + (found.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = bytes.get(at..).unwrap_or_default();
    at + tail.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(tail.len())
}

/// Reads `line` (already trimmed). `Err(Miss::Invalid)`: not a JSON object at all.
pub(super) fn scan(line: &[u8]) -> Result<Fields<'_>, Miss> {
    let text = std::str::from_utf8(line).map_err(|_| Miss::Invalid)?;
    let mut cursor = Cursor { text, bytes: line, at: 0 };
    let mut fields = Fields::default();
    cursor.ws();
    if cursor.bytes.get(cursor.at) != Some(&b'{') {
        // Valid JSON that is not an object (Python would crash on it); or garbage.
        return Err(Miss::Invalid);
    }
    cursor.object(0, &mut |key, value| {
        let slot = match key {
            "timestamp" => &mut fields.timestamp,
            "status" => &mut fields.status,
            "consumer_id" => &mut fields.consumer_id,
            "client_ip" => &mut fields.client_ip,
            "route_name" => &mut fields.route_name,
            "upstream_latency_ms" => &mut fields.upstream_latency_ms,
            "gateway_latency_ms" => &mut fields.gateway_latency_ms,
            _ => return Ok(()),
        };
        if *slot != Field::Absent || value == Field::Escaped {
            // Python keeps the last duplicate; rare enough to leave to the slow path.
            return Err(Miss::Unsure);
        }
        *slot = value;
        Ok(())
    })?;
    cursor.ws();
    if cursor.at != line.len() {
        return Err(Miss::Invalid);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fields_and_validates_the_rest() {
        let line = br#"{"timestamp":"2026-11-28T06:00:00.000Z","status":429,"x":{"a":[1,2.5e3,true,null,"s\n"]},"client_ip":"1.2.3.4","consumer_id":null,"upstream_latency_ms":-0.25}"#;
        let f = scan(line).unwrap();
        assert_eq!(f.status, Field::Num("429"));
        assert_eq!(f.client_ip, Field::Str("1.2.3.4"));
        assert_eq!(f.consumer_id, Field::Null);
        assert_eq!(f.route_name, Field::Absent);
        assert_eq!(f.upstream_latency_ms, Field::Num("-0.25"));
    }

    #[test]
    fn rejects_what_json_rejects() {
        for bad in [
            &br#"{"a":01}"#[..],
            br#"{"a":1,}"#,
            br#"{"a":"x"#,
            br#"{"a":tru}"#,
            br#"{"a":1} x"#,
            br#"{'a':1}"#,
            br#"{"a":"\q"}"#,
            br#"{"a":1.}"#,
            b"{\"a\":\"\x01\"}",
            br#"[1,2]"#,
            br#"not json"#,
        ] {
            assert_eq!(scan(bad).unwrap_err(), Miss::Invalid, "{}", String::from_utf8_lossy(bad));
            assert!(
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bad).is_err(),
                "serde_json agrees: {}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x01, 0x1f] {
                    let mut bytes: Vec<u8> = (0..len).map(|i| b"a~ \x7f\xc3\xa9!#"[i % 8]).collect();
                    if at < len {
                        bytes[at] = special;
                        // Bytes after the first special one do not matter.
                        if at + 1 < len {
                            bytes[at + 1] = b'"';
                        }
                    }
                    for from in 0..=at.min(len) {
                        assert_eq!(next_special(&bytes, from), at, "len {len} at {at} from {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn unusual_lines_go_to_the_slow_path() {
        assert_eq!(scan(br#"{"status":200,"status":401}"#).unwrap_err(), Miss::Unsure);
        assert_eq!(scan(br#"{"route_name":"caf\u00e9"}"#).unwrap_err(), Miss::Unsure);
        assert_eq!(scan(br#"{"path":"caf\u00e9","status":true}"#).unwrap().status, Field::Other);
        assert_eq!(scan(br#"{"st\u0061tus":401}"#).unwrap_err(), Miss::Unsure);
    }
}

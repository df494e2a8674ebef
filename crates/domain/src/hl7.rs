//! HL7 v2 ER7 messages as the gateway needs them: parse and check a message (segments separated
//! by CR, LF or CRLF; field, repetition, component, subcomponent separators and escape sequences
//! from MSH-1 / MSH-2), set MSH-11 (processing id) without touching anything else, and build an
//! ACK that names the segment and field of a problem.

/// A parsed message. Values keep their escape sequences; `decoded` resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub separators: Separators,
    /// Segments as written (without the segment terminator).
    pub segments: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Separators {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: char,
    pub subcomponent: char,
}

/// A problem with a message, located by segment (1-based position and name) and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct Hl7Error {
    /// e.g. `MSH-10` or `segment 3 (PID)`, or `message`.
    pub location: String,
    pub problem: String,
}

fn err(location: impl Into<String>, problem: impl Into<String>) -> Hl7Error {
    Hl7Error {
        location: location.into(),
        problem: problem.into(),
    }
}

/// Largest message accepted (bytes).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

impl Message {
    /// Parses and checks a message.
    pub fn parse(text: &str) -> Result<Self, Hl7Error> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(err(
                "message",
                format!("larger than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        let text = text.trim_start_matches('\u{feff}');
        let segments: Vec<String> = text
            .split(['\r', '\n'])
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .collect();
        let Some(msh) = segments.first() else {
            return Err(err("message", "is empty"));
        };
        if !msh.starts_with("MSH") {
            return Err(err(
                "segment 1",
                "the message must start with an MSH segment",
            ));
        }
        let mut chars = msh.chars().skip(3);
        let field = chars
            .next()
            .ok_or_else(|| err("MSH-1", "the field separator is missing"))?;
        let enc: Vec<char> = chars.take_while(|c| *c != field).collect();
        if !(4..=5).contains(&enc.len()) || !enc.iter().all(char::is_ascii_punctuation) {
            return Err(err(
                "MSH-2",
                "the encoding characters must be four (or five) punctuation characters such as ^~\\&",
            ));
        }
        let separators = Separators {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc[2],
            subcomponent: enc[3],
        };
        if !field.is_ascii_punctuation() {
            return Err(err(
                "MSH-1",
                "the field separator must be a punctuation character",
            ));
        }
        let all = [field, enc[0], enc[1], enc[2], enc[3]];
        for (i, c) in all.iter().enumerate() {
            if c.is_alphanumeric() || all[i + 1..].contains(c) {
                return Err(err("MSH-2", "the separators must be distinct punctuation"));
            }
        }
        let m = Self {
            separators,
            segments,
        };
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), Hl7Error> {
        for (i, seg) in self.segments.iter().enumerate() {
            let name: String = seg.chars().take(3).collect();
            let ok_name = name.len() == 3
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && seg
                    .chars()
                    .nth(3)
                    .is_none_or(|c| c == self.separators.field);
            if !ok_name {
                return Err(err(
                    format!("segment {}", i + 1),
                    format!(
                        "`{}` is not a segment name (three capital letters or digits, then the field separator)",
                        name.escape_default()
                    ),
                ));
            }
            for (f, value) in self.fields(i).iter().enumerate().skip(1) {
                let field_no = if name == "MSH" { f + 1 } else { f };
                if name == "MSH" && field_no <= 2 {
                    continue;
                }
                self.check_escapes(value)
                    .map_err(|p| err(format!("{name}-{field_no}"), p))?;
            }
        }
        for (n, what) in [
            (9, "message type"),
            (10, "message control id"),
            (12, "version id"),
        ] {
            if self.msh(n).is_none_or(str::is_empty) {
                return Err(err(format!("MSH-{n}"), format!("the {what} is empty")));
            }
        }
        Ok(())
    }

    fn check_escapes(&self, value: &str) -> Result<(), String> {
        let e = self.separators.escape;
        let mut rest = value;
        while let Some(start) = rest.find(e) {
            let after = &rest[start + e.len_utf8()..];
            let Some(end) = after.find(e) else {
                return Err("an escape sequence is not terminated".to_owned());
            };
            let seq = &after[..end];
            let known = matches!(seq, "F" | "S" | "T" | "R" | "E")
                || seq.starts_with('X') && seq[1..].chars().all(|c| c.is_ascii_hexdigit())
                || seq.starts_with('H') && seq.len() == 1
                || seq.starts_with('N') && seq.len() == 1
                || seq.starts_with(".br")
                || seq.starts_with(".sp")
                || seq.starts_with(".in")
                || seq.starts_with(".ti")
                || seq.starts_with('C')
                || seq.starts_with('M')
                || seq.starts_with('Z');
            if !known {
                return Err(format!(
                    "`{}` is not an escape sequence",
                    seq.escape_default()
                ));
            }
            rest = &after[end + e.len_utf8()..];
        }
        Ok(())
    }

    /// The fields of segment `i` split on the field separator; element 0 is the segment name.
    /// For MSH, element 1 is MSH-2, so MSH-n is element n - 1.
    #[must_use]
    pub fn fields(&self, i: usize) -> Vec<&str> {
        self.segments
            .get(i)
            .map(|s| s.split(self.separators.field).collect())
            .unwrap_or_default()
    }

    /// MSH-n as written (n ≥ 2).
    #[must_use]
    pub fn msh(&self, n: usize) -> Option<&str> {
        n.checked_sub(1)
            .and_then(|k| self.fields(0).get(k).copied())
    }

    /// Field `n` of the first segment named `name` (MSH numbering honoured), decoded.
    #[must_use]
    pub fn field(&self, name: &str, n: usize) -> Option<String> {
        let i = self.segments.iter().position(|s| s.starts_with(name))?;
        let k = if name == "MSH" { n.checked_sub(1)? } else { n };
        self.fields(i).get(k).map(|v| self.decoded(v))
    }

    /// Resolves the delimiter escape sequences (`\F\ \S\ \T\ \R\ \E\`, `\Xhh\`).
    #[must_use]
    pub fn decoded(&self, value: &str) -> String {
        let s = self.separators;
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find(s.escape) {
            out.push_str(&rest[..start]);
            let after = &rest[start + s.escape.len_utf8()..];
            let Some(end) = after.find(s.escape) else {
                out.push_str(&rest[start..]);
                return out;
            };
            match &after[..end] {
                "F" => out.push(s.field),
                "S" => out.push(s.component),
                "T" => out.push(s.subcomponent),
                "R" => out.push(s.repetition),
                "E" => out.push(s.escape),
                x if x.starts_with('X') => {
                    let bytes: Vec<u8> = (1..x.len())
                        .step_by(2)
                        .filter_map(|i| {
                            x.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())
                        })
                        .collect();
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
                _ => {}
            }
            rest = &after[end + s.escape.len_utf8()..];
        }
        out.push_str(rest);
        out
    }

    /// The repetitions of a field value, each split into components.
    #[must_use]
    pub fn components(&self, value: &str) -> Vec<Vec<String>> {
        value
            .split(self.separators.repetition)
            .map(|r| {
                r.split(self.separators.component)
                    .map(|c| self.decoded(c))
                    .collect()
            })
            .collect()
    }

    /// Sets MSH-11 (processing id), adding empty fields if the MSH is shorter.
    pub fn set_processing_id(&mut self, id: &str) {
        let f = self.separators.field;
        let mut parts: Vec<String> = self.segments[0].split(f).map(str::to_owned).collect();
        while parts.len() < 11 {
            parts.push(String::new());
        }
        parts[10] = id.to_owned();
        self.segments[0] = parts.join(&f.to_string());
    }

    /// The message with CR segment terminators.
    #[must_use]
    pub fn to_er7(&self) -> String {
        let mut s = self.segments.join("\r");
        s.push('\r');
        s
    }
}

/// An ACK for `original` (which may be too broken to parse: then a minimal MSH is used).
#[must_use]
pub fn ack(
    original: Option<&Message>,
    code: &str,
    text: &str,
    control_id: &str,
    now: &str,
) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if matches!(c, '|' | '^' | '~' | '\\' | '&' | '\r' | '\n') {
                    ' '
                } else {
                    c
                }
            })
            .collect::<String>()
    };
    match original {
        Some(m) => {
            let get = |n| m.msh(n).unwrap_or_default();
            let trigger = get(9)
                .split(m.separators.component)
                .nth(1)
                .unwrap_or_default();
            format!(
                "MSH|^~\\&|{}|{}|{}|{}|{now}||ACK^{}|{control_id}|{}|{}\rMSA|{code}|{}|{}\r",
                clean(get(5)),
                clean(get(6)),
                clean(get(3)),
                clean(get(4)),
                clean(trigger),
                clean(get(11)),
                clean(get(12)),
                clean(get(10)),
                clean(text)
            )
        }
        None => format!(
            "MSH|^~\\&|||||{now}||ACK|{control_id}|P|2.5\rMSA|{code}||{}\r",
            clean(text)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|SENDER|FAC|EPIC|HOSP|20240101120000||ADT^A01|MSG0001|P|2.5\rPID|1||123^^^MRN~456^^^SSN||Spinder^Beverley^P||19800101|F\rPV1|1|I|RAD\\F\\1";

    #[test]
    fn parses_fields_repetitions_components_and_escapes() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segments.len(), 3);
        assert_eq!(m.msh(9), Some("ADT^A01"));
        assert_eq!(m.msh(10), Some("MSG0001"));
        assert_eq!(m.field("PID", 5).unwrap(), "Spinder^Beverley^P");
        let reps = m.components(m.fields(1)[3]);
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[1][0], "456");
        assert_eq!(
            m.field("PV1", 3).unwrap(),
            "RAD|1",
            "\\F\\ is the field separator"
        );
    }

    #[test]
    fn lf_and_crlf_separators_are_accepted() {
        let lf = ADT.replace('\r', "\n");
        let crlf = ADT.replace('\r', "\r\n");
        assert_eq!(Message::parse(&lf).unwrap().segments.len(), 3);
        assert_eq!(Message::parse(&crlf).unwrap().segments.len(), 3);
    }

    #[test]
    fn processing_id_is_set_and_nothing_else_changes() {
        let mut m = Message::parse(ADT).unwrap();
        m.set_processing_id("T");
        let out = m.to_er7();
        assert_eq!(
            out,
            format!("{}\r", ADT.replace("|MSG0001|P|", "|MSG0001|T|"))
        );
        let mut short = Message::parse("MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P|2.5").unwrap();
        short.segments[0] = "MSH|^~\\&|A|B|C|D|1||ADT^A01|X".to_owned();
        short.set_processing_id("P");
        assert_eq!(short.segments[0], "MSH|^~\\&|A|B|C|D|1||ADT^A01|X|P");
    }

    #[test]
    fn problems_name_the_segment_and_field() {
        let e = |t: &str| Message::parse(t).unwrap_err().to_string();
        assert_eq!(e(""), "message: is empty");
        assert!(e("PID|1").starts_with("segment 1:"));
        assert!(e("MSH|^~").starts_with("MSH-2:"));
        assert!(e("MSH|^~\\&|A|B|C|D|1||ADT^A01||P|2.5").starts_with("MSH-10:"));
        assert!(e("MSH|^~\\&|A|B|C|D|1|||X|P|2.5").starts_with("MSH-9:"));
        assert!(e(&format!("{ADT}\rpid|2")).starts_with("segment 4:"));
        assert!(e(&ADT.replace("RAD\\F\\1", "RAD\\F1")).starts_with("PV1-3:"));
        assert!(e(&ADT.replace("RAD\\F\\1", "RAD\\Q\\1")).starts_with("PV1-3:"));
    }

    #[test]
    fn acks_swap_sender_and_receiver_and_echo_the_control_id() {
        let m = Message::parse(ADT).unwrap();
        let a = ack(
            Some(&m),
            "AR",
            "PID-5: bad | value",
            "ACK1",
            "20240101120001",
        );
        let parsed = Message::parse(&a).unwrap();
        assert_eq!(parsed.msh(3), Some("EPIC"));
        assert_eq!(parsed.msh(5), Some("SENDER"));
        assert_eq!(parsed.msh(9), Some("ACK^A01"));
        assert_eq!(parsed.field("MSA", 1).unwrap(), "AR");
        assert_eq!(parsed.field("MSA", 2).unwrap(), "MSG0001");
        assert_eq!(parsed.field("MSA", 3).unwrap(), "PID-5: bad   value");
        assert!(Message::parse(&ack(None, "AR", "x", "A", "1")).is_ok());
    }

    #[test]
    fn acks_never_carry_the_original_separators() {
        let m = Message::parse("MSH#$%*@#A|B\\C~D#F#R#H#1##ADT$A01#C1#P#2.5").unwrap();
        assert_eq!(m.msh(3), Some("A|B\\C~D"));
        assert!(Message::parse(&ack(Some(&m), "AA", "ok", "A", "1")).is_ok());
        assert!(
            Message::parse("MSH|^\\\u{1}\u{1a}|A|B|C|D|1||ADT^A01|C|P|2.5").is_err(),
            "control characters as separators"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            let alphabet = b"MSHPID|^~\\&\r\nFSTREX0123A";
            let s: String = (0..len)
                .map(|i| {
                    let k = (seed.rotate_left(i as u32 % 64) % alphabet.len() as u64) as usize;
                    alphabet[k] as char
                })
                .collect();
            let text = format!("MSH|^~\\&|{s}");
            if let Ok(m) = Message::parse(&text) {
                let _ = m.to_er7();
                let _ = m.field("PID", 3);
            }
            let _ = Message::parse(&s);
        }
    }
}

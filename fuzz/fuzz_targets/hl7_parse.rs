//! HL7v2 parser: never panics; a message it accepts survives MSH-11 rewriting and re-parsing
//! with the same segments, and its ACK parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_domain::hl7::{Message, ack};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Message::parse(text);
    let a = ack(parsed.as_ref().ok(), "AR", "fuzz", "CTRL", "20240101000000");
    assert!(Message::parse(&a).is_ok(), "an ACK must parse: {a:?}");
    if let Ok(mut m) = parsed {
        let n = m.segments.len();
        let _ = m.field("PID", 3);
        let _ = m.components(m.msh(9).unwrap_or_default());
        m.set_processing_id("T");
        let again = Message::parse(&m.to_er7()).expect("a rewritten message parses");
        assert_eq!(again.segments.len(), n);
        assert_eq!(again.msh(11), Some("T"));
    }
});

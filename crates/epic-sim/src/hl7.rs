//! Just enough HL7 v2 (ER7) to validate a message header and build its ACK.

/// What the simulator needs from MSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msh {
    pub field_sep: char,
    pub encoding: String,
    pub sending_app: String,
    pub sending_facility: String,
    pub receiving_app: String,
    pub receiving_facility: String,
    pub message_type: String,
    pub control_id: String,
    pub processing_id: String,
    pub version: String,
}

/// Splits a message into segments on CR, LF or CRLF.
#[must_use]
pub fn segments(msg: &str) -> Vec<&str> {
    msg.split(['\r', '\n'])
        .filter(|s| !s.trim().is_empty())
        .collect()
}

pub fn parse_msh(msg: &str) -> Result<Msh, String> {
    let segs = segments(msg);
    let first = segs.first().ok_or("the message is empty")?;
    if !first.starts_with("MSH") || first.len() < 8 {
        return Err("the message must start with an MSH segment".to_owned());
    }
    let sep = first[3..]
        .chars()
        .next()
        .ok_or("MSH-1 (field separator) is missing")?;
    let fields: Vec<&str> = first.split(sep).collect();
    // fields[0] = "MSH", fields[1] = encoding characters (MSH-2); MSH-n is fields[n-1].
    let get = |n: usize| fields.get(n - 1).copied().unwrap_or("").to_owned();
    let encoding = get(2);
    if encoding.len() < 4 {
        return Err("MSH-2 (encoding characters) must have four characters".to_owned());
    }
    let msh = Msh {
        field_sep: sep,
        encoding,
        sending_app: get(3),
        sending_facility: get(4),
        receiving_app: get(5),
        receiving_facility: get(6),
        message_type: get(9),
        control_id: get(10),
        processing_id: get(11),
        version: get(12),
    };
    if msh.message_type.is_empty() {
        return Err("MSH-9 (message type) is missing".to_owned());
    }
    if msh.control_id.is_empty() {
        return Err("MSH-10 (message control id) is missing".to_owned());
    }
    if msh.processing_id.is_empty() {
        return Err("MSH-11 (processing id) is missing".to_owned());
    }
    Ok(msh)
}

/// An ACK for `msh` with `code` (AA, AE, AR): sender and receiver swapped, MSA-2 = MSH-10.
#[must_use]
pub fn ack(msh: &Msh, code: &str, text: &str, control_id: &str, timestamp: &str) -> String {
    let s = msh.field_sep;
    let comp = msh.encoding.chars().next().unwrap_or('^');
    let trigger = msh.message_type.split(comp).nth(1).unwrap_or("");
    let version = if msh.version.is_empty() {
        "2.5.1"
    } else {
        msh.version.as_str()
    };
    format!(
        "MSH{s}{enc}{s}{ra}{s}{rf}{s}{sa}{s}{sf}{s}{timestamp}{s}{s}ACK{comp}{trigger}{s}{control_id}{s}{pid}{s}{version}\rMSA{s}{code}{s}{orig}{s}{text}\r",
        enc = msh.encoding,
        ra = msh.receiving_app,
        rf = msh.receiving_facility,
        sa = msh.sending_app,
        sf = msh.sending_facility,
        pid = msh.processing_id,
        orig = msh.control_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|APP|FAC|EPIC|HOSP|20261124120000||ADT^A08|MSG0001|T|2.5.1\rPID|1||Z100||Doe^Jane\r";

    #[test]
    fn the_header_is_read_whatever_the_line_endings() {
        for msg in [
            ADT.to_owned(),
            ADT.replace('\r', "\n"),
            ADT.replace('\r', "\r\n"),
        ] {
            let m = parse_msh(&msg).unwrap();
            assert_eq!(
                (
                    m.control_id.as_str(),
                    m.processing_id.as_str(),
                    m.message_type.as_str()
                ),
                ("MSG0001", "T", "ADT^A08")
            );
        }
    }

    #[test]
    fn the_ack_swaps_sender_and_receiver_and_echoes_the_control_id() {
        let m = parse_msh(ADT).unwrap();
        let a = ack(&m, "AA", "", "ACK1", "20261124120001");
        assert!(
            a.starts_with("MSH|^~\\&|EPIC|HOSP|APP|FAC|20261124120001||ACK^A08|ACK1|T|2.5.1\r"),
            "{a}"
        );
        assert!(a.contains("\rMSA|AA|MSG0001|"));
    }

    #[test]
    fn broken_headers_are_named() {
        assert!(parse_msh("PID|1").unwrap_err().contains("MSH"));
        assert!(
            parse_msh("MSH|^~\\&|A|B|C|D|T||ADT^A01||P|2.5")
                .unwrap_err()
                .contains("MSH-10")
        );
        assert!(parse_msh("").unwrap_err().contains("empty"));
    }
}

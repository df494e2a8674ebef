//! Gateway access records as they are stored: in batches, one line of text per record.
//!
//! The gateway writes thousands of records a second. Writing them as one database row per batch
//! (the lines as one text value) costs a fraction of a row per record, and the stored text is
//! exactly what the batch's audit entry digests, so an auditor can check a batch byte for byte.
//!
//! A line holds the record's fields in this order, tab-separated: `at`, `app_id`, `gateway_id`,
//! `kind`, `interaction`, `resource_type`, `resource_id`, `status`, `latency_us`, `request_id`.
//! An absent field is empty; `\`, tab, newline and carriage return in a value are written `\\`,
//! `\t`, `\n` and `\r`. A record's `seq` is its batch id times [`SEQ_PER_BATCH`] plus its line
//! number in the batch.

use crate::GatewayRequestRow;
use std::fmt::Write as _;

/// Records in one batch at most; also the stride of `seq` between batches.
pub const SEQ_PER_BATCH: i64 = 1 << 20;

/// One batch of records, encoded as they come in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessBatch {
    pub first_at: i64,
    pub last_at: i64,
    pub count: i64,
    /// The batch's gateway ids, each between spaces (` a b `), for filtering.
    pub gateways: String,
    /// The batch's app ids, likewise.
    pub apps: String,
    pub lines: String,
}

impl AccessBatch {
    /// Encodes `rows` (at most [`SEQ_PER_BATCH`]; their `seq` is ignored).
    #[must_use]
    pub fn new(rows: &[GatewayRequestRow]) -> Self {
        let mut b = Self::default();
        for r in rows {
            b.push(r);
        }
        b
    }

    /// Adds one record (its `seq` is ignored).
    pub fn push(&mut self, r: &GatewayRequestRow) {
        if self.count == 0 {
            self.lines.reserve(64 * 1024);
            self.first_at = r.at;
            self.last_at = r.at;
        }
        self.first_at = self.first_at.min(r.at);
        self.last_at = self.last_at.max(r.at);
        self.count += 1;
        encode(&mut self.lines, r);
        add_id(&mut self.gateways, &r.gateway_id);
        if let Some(a) = &r.app_id {
            add_id(&mut self.apps, a);
        }
    }

    /// Adds the records of `later` after this batch's.
    pub fn append(&mut self, later: Self) {
        if later.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = later;
            return;
        }
        self.first_at = self.first_at.min(later.first_at);
        self.last_at = self.last_at.max(later.last_at);
        self.count += later.count;
        self.lines.push_str(&later.lines);
        for id in later.gateways.split(' ').filter(|i| !i.is_empty()) {
            add_id(&mut self.gateways, id);
        }
        for id in later.apps.split(' ').filter(|i| !i.is_empty()) {
            add_id(&mut self.apps, id);
        }
    }

    /// Whether the batch holds as many records as one may.
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.count >= SEQ_PER_BATCH
    }
}

/// Adds `id` to a spaced id list unless it is there.
fn add_id(list: &mut String, id: &str) {
    if list.is_empty() {
        list.push(' ');
    }
    if !list.split(' ').any(|i| i == id) {
        list.push_str(id);
        list.push(' ');
    }
}

fn escaped(out: &mut String, v: &str) {
    if !v.contains(['\\', '\t', '\n', '\r']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn o(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or_default()
}

fn encode(out: &mut String, r: &GatewayRequestRow) {
    let _ = write!(out, "{}\t", r.at);
    for v in [
        o(&r.app_id),
        &r.gateway_id,
        &r.kind,
        o(&r.interaction),
        o(&r.resource_type),
        o(&r.resource_id),
    ] {
        escaped(out, v);
        out.push('\t');
    }
    let _ = write!(out, "{}\t{}\t", r.status, r.latency_us);
    escaped(out, o(&r.request_id));
    out.push('\n');
}

fn unescaped(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One line back into a record (`None` for a line that is not one).
fn decode(line: &str, seq: i64) -> Option<GatewayRequestRow> {
    let f: Vec<&str> = line.split('\t').collect();
    let [
        at,
        app,
        gateway,
        kind,
        interaction,
        rtype,
        rid,
        status,
        latency,
        request_id,
    ] = f[..]
    else {
        return None;
    };
    let opt = |v: &str| (!v.is_empty()).then(|| unescaped(v));
    Some(GatewayRequestRow {
        seq,
        at: at.parse().ok()?,
        app_id: opt(app),
        gateway_id: unescaped(gateway),
        kind: unescaped(kind),
        interaction: opt(interaction),
        resource_type: opt(rtype),
        resource_id: opt(rid),
        status: status.parse().ok()?,
        latency_us: latency.parse().ok()?,
        request_id: opt(request_id),
    })
}

/// The records of batch `id` that match the filters and come before the `before` cursor, newest
/// first, at most `limit` of them, appended to `out`.
pub fn newest_first(
    id: i64,
    lines: &str,
    gateway_id: Option<&str>,
    app_id: Option<&str>,
    before: Option<i64>,
    limit: usize,
    out: &mut Vec<GatewayRequestRow>,
) {
    let base = id.saturating_mul(SEQ_PER_BATCH);
    let last = i64::try_from(lines.lines().count()).unwrap_or(0) - 1;
    for (back, line) in (0_i64..).zip(lines.lines().rev()) {
        if out.len() >= limit {
            return;
        }
        let seq = base + last - back;
        if before.is_some_and(|b| seq >= b) {
            continue;
        }
        let Some(r) = decode(line, seq) else { continue };
        if gateway_id.is_some_and(|g| r.gateway_id != g)
            || app_id.is_some_and(|a| r.app_id.as_deref() != Some(a))
        {
            continue;
        }
        out.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        at: i64,
        app: Option<&str>,
        gateway: &str,
        request_id: Option<&str>,
    ) -> GatewayRequestRow {
        GatewayRequestRow {
            seq: 0,
            at,
            app_id: app.map(str::to_owned),
            gateway_id: gateway.to_owned(),
            kind: "fhir".to_owned(),
            interaction: Some("read".to_owned()),
            resource_type: Some("Patient".to_owned()),
            resource_id: Some("e63wRTbPfr1p8UW81d8Seiw3".to_owned()),
            status: 200,
            latency_us: 812,
            request_id: request_id.map(str::to_owned),
        }
    }

    #[test]
    fn a_batch_reads_back_newest_first_with_awkward_values_intact() {
        let rows = vec![
            row(10, Some("app_a"), "gw_1", Some("plain")),
            row(11, None, "gw_2", Some("tab\there\\ and\nnewline\r")),
            row(12, Some("app_b"), "gw_1", None),
        ];
        let b = AccessBatch::new(&rows);
        assert_eq!((b.first_at, b.last_at, b.count), (10, 12, 3));
        assert_eq!(b.gateways, " gw_1 gw_2 ");
        assert_eq!(b.apps, " app_a app_b ");
        assert_eq!(
            b.lines.lines().count(),
            3,
            "one line per record: {:?}",
            b.lines
        );
        let mut out = Vec::new();
        newest_first(7, &b.lines, None, None, None, 10, &mut out);
        let want: Vec<GatewayRequestRow> = rows
            .iter()
            .enumerate()
            .rev()
            .map(|(i, r)| GatewayRequestRow {
                seq: 7 * SEQ_PER_BATCH + i64::try_from(i).unwrap(),
                ..r.clone()
            })
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn batches_append_in_order_and_merge_their_ids() {
        let a = vec![
            row(5, Some("app_a"), "gw_1", None),
            row(3, None, "gw_1", None),
        ];
        let b = vec![
            row(9, Some("app_b"), "gw_2", None),
            row(7, Some("app_a"), "gw_1", None),
        ];
        let mut joined = AccessBatch::new(&a);
        joined.append(AccessBatch::new(&b));
        let all: Vec<_> = a.iter().chain(&b).cloned().collect();
        assert_eq!(joined, AccessBatch::new(&all));
        assert_eq!((joined.first_at, joined.last_at, joined.count), (3, 9, 4));
        let mut empty = AccessBatch::default();
        empty.append(AccessBatch::new(&a));
        assert_eq!(empty, AccessBatch::new(&a));
        assert!(!empty.is_full());
        assert_eq!(AccessBatch::new(&[]), AccessBatch::default());
    }

    #[test]
    fn filters_cursor_and_limit_apply() {
        let rows: Vec<_> = (0..6)
            .map(|i| row(i, Some(if i % 2 == 0 { "even" } else { "odd" }), "gw", None))
            .collect();
        let b = AccessBatch::new(&rows);
        let mut out = Vec::new();
        newest_first(1, &b.lines, Some("gw"), Some("even"), None, 2, &mut out);
        assert_eq!(out.iter().map(|r| r.at).collect::<Vec<_>>(), [4, 2]);
        let mut out = Vec::new();
        newest_first(
            1,
            &b.lines,
            None,
            None,
            Some(SEQ_PER_BATCH + 3),
            10,
            &mut out,
        );
        assert_eq!(out.iter().map(|r| r.at).collect::<Vec<_>>(), [2, 1, 0]);
        let mut out = Vec::new();
        newest_first(1, &b.lines, Some("other"), None, None, 10, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_damaged_line_is_skipped_not_misread() {
        let mut out = Vec::new();
        newest_first(
            1,
            "not\ta record\n12\t\tgw\tfhir\t\t\t\t200\tx\t\n",
            None,
            None,
            None,
            10,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }
}

//! Just enough HTTP/1.1 for the gateway's data path: an upstream keepalive pool per event loop,
//! answer heads parsed with `httparse`, bodies framed by length, by chunks or by the connection's
//! end, and the pieces of an answer written back to the app. Everything else (bodies sent by the
//! app, upgrades, HTTP/2) stays with hyper.

use bytes::{Bytes, BytesMut};
use hyper::header::HeaderName;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::ops::Range;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::{Stream, UpstreamError, connect};

/// Heads larger than this are refused.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Headers of an answer one can ask for.
const MAX_WANTED: usize = 8;
const READ_CHUNK: usize = 16 * 1024;
/// Idle upstream connections kept per origin and event loop.
const MAX_IDLE: usize = 128;

/// An upstream connection and the bytes read past what has been consumed.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
}

impl Conn {
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        self.io.read_buf(&mut self.buf).await
    }
}

thread_local! {
    /// Idle connections by origin (`scheme://host:port`). Each event loop is one thread and its
    /// connections are registered with its own reactor, so the pool is per thread.
    static IDLE: RefCell<HashMap<String, Vec<Conn>>> = RefCell::new(HashMap::new());
}

fn take_idle(origin: &str) -> Option<Conn> {
    IDLE.with(|p| p.borrow_mut().get_mut(origin).and_then(Vec::pop))
}

/// Gives a connection whose last answer was read to its end back to the pool.
pub fn release(origin: &str, conn: Conn) {
    if !conn.buf.is_empty() {
        return; // bytes nobody asked for: the connection is out of step
    }
    IDLE.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(v) = p.get_mut(origin) {
            if v.len() < MAX_IDLE {
                v.push(conn);
            }
        } else {
            p.insert(origin.to_owned(), vec![conn]);
        }
    });
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// An answer's head: the raw bytes and where the headers the gateway uses are.
pub struct Head {
    pub status: u16,
    raw: Bytes,
    /// Values of the headers asked for, in the order asked.
    wanted: [Option<Range<usize>>; MAX_WANTED],
    content_type: Option<Range<usize>>,
    pub framing: Framing,
    pub keep_alive: bool,
}

impl Head {
    /// The value of the `i`-th wanted header.
    pub fn wanted(&self, i: usize) -> Option<&[u8]> {
        self.wanted
            .get(i)
            .and_then(Option::as_ref)
            .map(|r| &self.raw[r.clone()])
    }

    /// The `Content-Type` value.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.content_type.as_ref().map(|r| &self.raw[r.clone()])
    }
}

fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

fn has_token(v: &[u8], token: &str) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

enum HeadError {
    /// The connection ended before any byte of an answer: a keepalive connection the upstream
    /// had closed (safe to retry a GET on a fresh one).
    Stale,
    Bad(String),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        Self::Bad(e.kind().to_string())
    }
}

async fn read_head(conn: &mut Conn, wanted: &[HeaderName]) -> Result<Head, HeadError> {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    let http11 = resp.version == Some(1);
                    let base = &conn.buf[..len];
                    let mut found: [Option<Range<usize>>; MAX_WANTED] = Default::default();
                    let mut content_type = None;
                    let mut length = None;
                    let mut chunked = None;
                    let mut close = !http11;
                    for h in resp.headers.iter() {
                        if let Some(i) = wanted
                            .iter()
                            .position(|w| h.name.eq_ignore_ascii_case(w.as_str()))
                            && let Some(slot) = found.get_mut(i)
                        {
                            slot.get_or_insert_with(|| range_in(base, h.value));
                        }
                        if h.name.eq_ignore_ascii_case("content-type") {
                            content_type = Some(range_in(base, h.value));
                        } else if h.name.eq_ignore_ascii_case("content-length") {
                            let n = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .ok_or_else(|| HeadError::Bad("bad content-length".to_owned()))?;
                            if length.is_some_and(|l| l != n) {
                                return Err(HeadError::Bad(
                                    "conflicting content-length".to_owned(),
                                ));
                            }
                            length = Some(n);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            // Chunked only when it is the last coding.
                            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or_default();
                            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if has_token(h.value, "close") {
                                close = true;
                            } else if has_token(h.value, "keep-alive") {
                                close = false;
                            }
                        }
                    }
                    let framing = match (status, chunked, length) {
                        (100..=199 | 204 | 304, _, _) => Framing::Empty,
                        (_, Some(true), _) => Framing::Chunked,
                        (_, Some(false), _) | (_, None, None) => Framing::Close,
                        (_, None, Some(n)) => Framing::Length(n),
                    };
                    Some((
                        len,
                        status,
                        found,
                        content_type,
                        framing,
                        !close && framing != Framing::Close,
                    ))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(HeadError::Bad(format!("bad answer head: {e}"))),
            }
        };
        if let Some((len, status, wanted, content_type, framing, keep_alive)) = parsed {
            let raw = conn.buf.split_to(len).freeze();
            if (100..200).contains(&status) {
                continue; // an interim answer (the final one follows)
            }
            return Ok(Head {
                status,
                raw,
                wanted,
                content_type,
                framing,
                keep_alive,
            });
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(HeadError::Bad("answer head too large".to_owned()));
        }
        let was_empty = conn.buf.is_empty();
        match conn.read_more().await {
            Ok(0) | Err(_) if was_empty => return Err(HeadError::Stale),
            Ok(0) => {
                return Err(HeadError::Bad(
                    "connection closed in the answer head".to_owned(),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends a GET head (no body) and reads the answer's head, on a pooled connection when there is
/// one (and once more on a fresh one when the pooled connection turns out to be closed).
pub async fn exchange(
    origin: &str,
    url: &url::Url,
    ca_bundle: Option<&str>,
    request: &[u8],
    wanted: &[HeaderName],
) -> Result<(Conn, Head), UpstreamError> {
    if let Some(mut conn) = take_idle(origin) {
        match ask(&mut conn, request, wanted).await {
            Ok(head) => return Ok((conn, head)),
            Err(HeadError::Bad(why)) => return Err(UpstreamError::Unreachable(why)),
            Err(HeadError::Stale) => {}
        }
    }
    let mut conn = Conn {
        io: connect(url, ca_bundle).await?,
        buf: BytesMut::with_capacity(READ_CHUNK),
    };
    match ask(&mut conn, request, wanted).await {
        Ok(head) => Ok((conn, head)),
        Err(HeadError::Stale) => Err(UpstreamError::Unreachable(
            "connection closed before an answer".to_owned(),
        )),
        Err(HeadError::Bad(why)) => Err(UpstreamError::Unreachable(why)),
    }
}

/// Sends a request head on a connection and reads the answer's head. A connection that fails
/// before any byte of the answer, sending included, is stale.
async fn ask(conn: &mut Conn, request: &[u8], wanted: &[HeaderName]) -> Result<Head, HeadError> {
    if conn.io.write_all(request).await.is_err() || conn.io.flush().await.is_err() {
        return Err(HeadError::Stale);
    }
    read_head(conn, wanted).await
}

/// Reads a whole `Content-Length` body.
pub async fn read_exact(conn: &mut Conn, n: usize) -> io::Result<Bytes> {
    while conn.buf.len() < n {
        if conn.read_more().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(conn.buf.split_to(n).freeze())
}

/// Where a body reader is.
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// Yields a body's pieces as they arrive.
pub struct BodyReader {
    state: BodyState,
}

impl BodyReader {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::Close => BodyState::Close,
        };
        Self { state }
    }

    /// The body was read to its end (the connection may serve another request).
    pub fn finished(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// The next piece, `None` at the end.
    pub async fn next(&mut self, conn: &mut Conn) -> io::Result<Option<Bytes>> {
        fn bad(what: &str) -> io::Error {
            io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
        }
        loop {
            match self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(n) | BodyState::ChunkData(n) => {
                    if conn.buf.is_empty() && conn.read_more().await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let k = usize::try_from(n).unwrap_or(usize::MAX).min(conn.buf.len());
                    let piece = conn.buf.split_to(k).freeze();
                    let left = n - k as u64;
                    self.state = match (&self.state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), l) => BodyState::Length(l),
                        (_, 0) => BodyState::ChunkEnd,
                        (_, l) => BodyState::ChunkData(l),
                    };
                    return Ok(Some(piece));
                }
                BodyState::Close => {
                    if conn.buf.is_empty() && conn.read_more().await? == 0 {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    return Ok(Some(conn.buf.split().freeze()));
                }
                BodyState::ChunkSize | BodyState::Trailers => {
                    let Some(eol) = memchr::memmem::find(&conn.buf, b"\r\n") else {
                        if conn.buf.len() > 8 * 1024 {
                            return Err(bad("chunk line too long"));
                        }
                        if conn.read_more().await? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        continue;
                    };
                    let line = conn.buf.split_to(eol + 2);
                    let line = &line[..eol];
                    if matches!(self.state, BodyState::Trailers) {
                        if line.is_empty() {
                            self.state = BodyState::Done;
                        }
                        continue;
                    }
                    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(digits.trim_ascii())
                        .ok()
                        .filter(|d| !d.is_empty() && d.len() <= 15)
                        .and_then(|d| u64::from_str_radix(d, 16).ok())
                        .ok_or_else(|| bad("bad chunk size"))?;
                    self.state = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                BodyState::ChunkEnd => {
                    while conn.buf.len() < 2 {
                        if conn.read_more().await? == 0 {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Err(bad("chunk not followed by CRLF"));
                    }
                    let _ = conn.buf.split_to(2);
                    self.state = BodyState::ChunkSize;
                }
            }
        }
    }
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header value that cannot break the head it goes into.
pub fn safe_value(v: &[u8]) -> bool {
    !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Appends the `Date` header (formatted once a second per thread).
pub fn date_header(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now.timestamp() {
            *d = (
                now.timestamp(),
                now.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            );
        }
        header(out, "date", d.1.as_bytes());
    });
}

/// Appends `Content-Length` and the blank line that ends a head.
pub fn content_length(out: &mut Vec<u8>, n: usize) {
    let _ = write!(out, "content-length: {n}\r\n\r\n");
}

/// Appends one chunk of a chunked body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_match_case_insensitively() {
        assert!(has_token(b"Keep-Alive, Close", "close"));
        assert!(!has_token(b"closed", "close"));
    }

    #[test]
    fn chunks_are_framed_with_hex_sizes() {
        let mut out = Vec::new();
        chunk(&mut out, &[b'a'; 26]);
        chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            out,
            [b"1a\r\n".as_slice(), &[b'a'; 26], b"\r\n0\r\n\r\n"].concat()
        );
    }

    #[test]
    fn unsafe_header_values_are_spotted() {
        assert!(safe_value(b"Bearer abc"));
        assert!(!safe_value(b"abc\r\nx: y"));
    }
}

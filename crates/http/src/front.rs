//! The front door. Connections are accepted by one event loop per core (a current-thread runtime
//! on its own thread, all sharing the listening socket, as nginx's workers do), so a proxied
//! request never crosses threads. A loop answers the gateway's FHIR reads (`GET
//! /gateways/{name}/fhir/R4/...` without a body) itself, with `h1`'s lean HTTP/1.1 code and the
//! same checks as the axum handler. At the first request it does not serve, it hands the
//! connection, with the bytes already read, to hyper and the axum router on the main runtime,
//! where the connection stays.

use crate::h1;
use crate::routes::gateway::FORWARDED_REQUEST_HEADERS;
use axum::Router;
use axum::http::header;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use switchboard_app::App;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every connection can reach.
struct Front {
    app: App,
    router: Router,
    /// The main runtime, where handed-off connections are served.
    main: tokio::runtime::Handle,
    /// Every connection, wherever it is served (shutdown waits for them).
    connections: TaskTracker,
    stop: CancellationToken,
    ids: crate::CounterRequestId,
    /// Each loop's inbox of accepted connections: whichever loop accepts a connection deals it
    /// to the next loop in turn, so the loops share the work evenly.
    inboxes: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    dealt: AtomicUsize,
}

/// Serves until `shutdown` completes (or this future is dropped), then lets the requests in
/// flight finish and closes idle connections.
pub async fn serve(
    listener: TcpListener,
    app: App,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // Background work started by requests must not live on a loop that ends at shutdown.
    app.start_gateway_request_writer();
    let listener = listener.into_std()?;
    let stop = CancellationToken::new();
    let _stop_when_dropped = stop.clone().drop_guard();
    let loops = match app.config().event_loops {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n as usize,
    };
    let (inboxes, mut receivers): (Vec<_>, Vec<_>) =
        (0..loops).map(|_| mpsc::unbounded_channel()).unzip();
    let front = Arc::new(Front {
        app,
        router,
        main: tokio::runtime::Handle::current(),
        connections: TaskTracker::new(),
        stop: stop.clone(),
        ids: crate::CounterRequestId::default(),
        inboxes,
        dealt: AtomicUsize::new(0),
    });
    let mut threads = Vec::with_capacity(loops);
    for (i, inbox) in receivers.drain(..).enumerate() {
        let listener = listener.try_clone()?;
        let front = Arc::clone(&front);
        let stop = stop.child_token();
        threads.push(
            std::thread::Builder::new()
                .name(format!("sb-front-{i}"))
                .spawn(move || event_loop(i, listener, inbox, &front, &stop))?,
        );
    }
    drop(listener);
    shutdown.await;
    stop.cancel();
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    front.connections.close();
    front.connections.wait().await;
    Ok(())
}

fn event_loop(
    me: usize,
    listener: std::net::TcpListener,
    mut inbox: mpsc::UnboundedReceiver<std::net::TcpStream>,
    front: &Arc<Front>,
    stop: &CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "an event loop could not start");
            return;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "an event loop could not listen");
                return;
            }
        };
        let here = TaskTracker::new();
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(io) = inbox.recv() => {
                    if let Ok(io) = TcpStream::from_std(io) {
                        here.spawn(connection(Arc::clone(front), io, stop.clone()));
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((io, _)) => {
                        let _ = io.set_nodelay(true);
                        let to = front.dealt.fetch_add(1, Ordering::Relaxed) % front.inboxes.len();
                        if to == me {
                            here.spawn(connection(Arc::clone(front), io, stop.clone()));
                        } else if let Ok(io) = io.into_std()
                            && let Err(back) = front.inboxes[to].send(io)
                            && let Ok(io) = TcpStream::from_std(back.0)
                        {
                            // That loop is gone (it could not start): serve it here.
                            here.spawn(connection(Arc::clone(front), io, stop.clone()));
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: breathe, then go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        here.close();
        here.wait().await;
    });
}

/// One connection on an event loop.
async fn connection(front: Arc<Front>, mut io: TcpStream, stop: CancellationToken) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(8 * 1024);
    loop {
        let (mut read, len) = loop {
            match parse(&buf) {
                Parsed::Read(r, len) => break (r, len),
                Parsed::Partial if buf.len() <= h1::MAX_HEAD => {}
                Parsed::Partial | Parsed::Other => return handoff(&front, io, buf.freeze()),
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            let n = tokio::select! {
                biased;
                n = io.read_buf(&mut buf) => n,
                () = stop.cancelled(), if buf.is_empty() => return,
            };
            if !matches!(n, Ok(n) if n > 0) {
                return;
            }
        };
        read.head = buf.split_to(len).freeze();
        read.close |= stop.is_cancelled();
        let served = std::panic::AssertUnwindSafe(crate::routes::gateway::serve_read(
            &front.app, &front.ids, &read, &mut io, &mut out,
        ));
        match futures_util::FutureExt::catch_unwind(served).await {
            Ok(Ok(true)) if !read.close => {}
            Ok(_) => return,
            Err(_) => {
                tracing::error!("a gateway read panicked");
                out.clear();
                let r =
                    axum::response::IntoResponse::into_response(crate::error::ApiError::internal());
                let _ = write_response(&mut io, &mut out, r, "-", true).await;
                return;
            }
        }
    }
}

/// A gateway FHIR read (`GET`, no body) as the front door serves it; ranges index `head`.
pub struct FhirRead {
    head: Bytes,
    gateway: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    authorization: Option<Range<usize>>,
    request_id: Option<Range<usize>>,
    /// Values of the headers passed on to Epic, in `FORWARDED_REQUEST_HEADERS`' order.
    forwarded: [Option<Range<usize>>; 7],
    /// The app asked to close the connection after this answer.
    pub close: bool,
}

impl FhirRead {
    fn text(&self, r: &Range<usize>) -> &str {
        // Checked to be ASCII when parsed.
        std::str::from_utf8(&self.head[r.clone()]).unwrap_or_default()
    }

    pub fn gateway(&self) -> &str {
        self.text(&self.gateway)
    }

    /// The FHIR path after `fhir/R4/`.
    pub fn path(&self) -> &str {
        self.text(&self.path)
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_ref().map(|r| self.text(r))
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer(&self) -> Option<&str> {
        crate::routes::gateway::bearer_token(
            std::str::from_utf8(&self.head[self.authorization.clone()?]).ok()?,
        )
    }

    pub fn request_id(&self) -> Option<&str> {
        std::str::from_utf8(&self.head[self.request_id.clone()?]).ok()
    }

    /// The value of `FORWARDED_REQUEST_HEADERS[i]`, when the app sent it.
    pub fn forwarded(&self, i: usize) -> Option<&[u8]> {
        self.forwarded
            .get(i)
            .and_then(Option::as_ref)
            .map(|r| &self.head[r.clone()])
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per request on the loop's stack; boxing it would allocate per read"
)]
enum Parsed {
    /// A request the front door serves, and the length of its head.
    Read(FhirRead, usize),
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Path characters served here; the rest (percent-escapes above all, which axum decodes) goes
/// to the axum handler so both paths mean the same thing.
fn plain_path(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b))
}

fn plain_query(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some((gateway, fhir)) = path
        .strip_prefix("/gateways/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(g, rest)| Some((g, rest.strip_prefix("fhir/R4/")?)))
    else {
        return Parsed::Other;
    };
    if gateway.is_empty()
        || fhir.is_empty()
        || !plain_path(gateway)
        || !plain_path(fhir)
        || !query.is_none_or(plain_query)
    {
        return Parsed::Other;
    }
    let at = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + part.len()
    };
    let mut read = FhirRead {
        head: Bytes::new(),
        gateway: at(gateway.as_bytes()),
        path: at(fhir.as_bytes()),
        query: query.filter(|q| !q.is_empty()).map(|q| at(q.as_bytes())),
        authorization: None,
        request_id: None,
        forwarded: Default::default(),
        close: false,
    };
    for h in req.headers.iter() {
        let name = h.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("authorization") {
            read.authorization.get_or_insert_with(|| at(h.value));
        } else if is("x-request-id") {
            read.request_id.get_or_insert_with(|| at(h.value));
        } else if is("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Parsed::Other;
            }
        } else if is("transfer-encoding") || is("expect") || is("upgrade") {
            return Parsed::Other;
        } else if is("connection") {
            for t in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if t.eq_ignore_ascii_case(b"close") {
                    read.close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        } else if let Some(i) = FORWARDED_REQUEST_HEADERS
            .iter()
            .position(|f| is(f.as_str()))
            && let Some(slot) = read.forwarded.get_mut(i)
        {
            slot.get_or_insert_with(|| at(h.value));
        }
    }
    Parsed::Read(read, len)
}

/// Writes an axum response (the gateway's error answers) to a connection the front door serves.
pub async fn write_response(
    io: &mut TcpStream,
    out: &mut Vec<u8>,
    response: Response,
    request_id: &str,
    close: bool,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    out.clear();
    h1::status_line(out, parts.status.as_u16());
    for (name, value) in &parts.headers {
        if !matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        ) && name != "x-request-id"
        {
            h1::header(out, name.as_str(), value.as_bytes());
        }
    }
    finish_head(out, request_id, close);
    h1::content_length(out, body.len());
    out.extend_from_slice(&body);
    io.write_all(out).await
}

/// The headers every answer of the front door ends its head with (but `Content-Length` /
/// `Transfer-Encoding` and the blank line).
pub fn finish_head(out: &mut Vec<u8>, request_id: &str, close: bool) {
    if h1::safe_value(request_id.as_bytes()) {
        h1::header(out, "x-request-id", request_id.as_bytes());
    }
    if close {
        h1::header(out, "connection", b"close");
    }
    h1::date_header(out);
}

/// Hands a connection, with what was read of it, to hyper on the main runtime.
fn handoff(front: &Arc<Front>, io: TcpStream, read: Bytes) {
    let Ok(io) = io.into_std() else {
        return;
    };
    let f = Arc::clone(front);
    front
        .connections
        .spawn_on(hyper_connection(f, io, read), &front.main);
}

async fn hyper_connection(front: Arc<Front>, io: std::net::TcpStream, read: Bytes) {
    let Ok(io) = TcpStream::from_std(io) else {
        return;
    };
    let service = hyper_util::service::TowerToHyperService::new(front.router.clone());
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(Rewind { read, io }), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = front.stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A connection that first yields the bytes the front door had already read.
struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.read.is_empty() {
            let n = me.read.len().min(buf.remaining());
            buf.put_slice(&me.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(raw: &str) -> Option<FhirRead> {
        match parse(raw.as_bytes()) {
            Parsed::Read(mut r, len) => {
                r.head = Bytes::copy_from_slice(&raw.as_bytes()[..len]);
                Some(r)
            }
            _ => None,
        }
    }

    #[test]
    fn a_plain_fhir_read_is_served_here() {
        let r = read(
            "GET /gateways/main/fhir/R4/Patient/123?_elements=name HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer abc\r\nAccept: application/json\r\nX-Request-Id: r1\r\n\r\n",
        )
        .expect("served here");
        assert_eq!(r.gateway(), "main");
        assert_eq!(r.path(), "Patient/123");
        assert_eq!(r.query(), Some("_elements=name"));
        assert_eq!(r.bearer(), Some("abc"));
        assert_eq!(r.request_id(), Some("r1"));
        assert_eq!(r.forwarded(0), Some(b"application/json".as_slice()));
        assert!(!r.close);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "POST /gateways/main/fhir/R4/Patient HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            "GET /gateways/main/fhir/R4/Patient/%31 HTTP/1.1\r\n\r\n",
            "GET /gateways/main/epic/2014/x HTTP/1.1\r\n\r\n",
            "GET /admin/api/v1/devices HTTP/1.1\r\n\r\n",
            "GET /gateways/main/fhir/R4/Patient/1 HTTP/1.0\r\n\r\n",
            "GET /gateways/main/fhir/R4/Patient/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /gateways/main/fhir/R4/Patient/1 HTTP/1.1\r\nConnection: Upgrade\r\n\r\n",
            "GET /gateways/main/fhir/R4/ HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(read(raw).is_none(), "{raw}");
        }
        assert!(matches!(
            parse(b"GET /gateways/main/fhir/R4/Patient/1 HTTP/1.1\r\nHost"),
            Parsed::Partial
        ));
    }

    #[test]
    fn connection_close_is_honoured() {
        let r = read(
            "GET /gateways/g/fhir/R4/metadata HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
        )
        .expect("served here");
        assert!(r.close);
    }
}

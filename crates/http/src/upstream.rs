//! The gateway's HTTP/1.1 client toward Epic: keepalive connections per upstream, each request
//! driven inside the calling task (no connection task to wake across threads), so a proxied
//! read costs two socket writes and two reads. Small answers are read whole; a large or unsized
//! answer hands its connection to a task and streams.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::either::Either;

pub(crate) type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Answers up to this size are read whole.
pub const SMALL_BODY: u64 = 64 * 1024;
const MAX_IDLE: usize = 256;

/// An HTTP/1.1 connection: the request handle and the connection state machine, both polled by
/// whichever task is using it (nobody polls an idle one).
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: std::pin::Pin<Box<http1::Connection<TokioIo<Stream>, Full<Bytes>>>>,
}

/// Idle keepalive connections to one `scheme://host:port`.
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

fn pools() -> &'static Mutex<HashMap<String, Arc<Pool>>> {
    static POOLS: OnceLock<Mutex<HashMap<String, Arc<Pool>>>> = OnceLock::new();
    POOLS.get_or_init(Mutex::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tls_config(ca_bundle: Option<&str>) -> Arc<rustls::ClientConfig> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let build = |extra: Option<&str>| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        if let Some(pem) = extra {
            use rustls::pki_types::pem::PemObject;
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
                let _ = roots.add(c);
            }
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| unreachable!("TLS 1.2 is always available"))
            }),
        )
    };
    match ca_bundle {
        None => Arc::clone(DEFAULT.get_or_init(|| build(None))),
        Some(pem) => build(Some(pem)),
    }
}

/// Why a call failed before Epic answered.
#[derive(Debug)]
pub enum UpstreamError {
    Timeout,
    Unreachable(String),
}

/// Epic's answer: head, and the body whole (small) or streaming (large).
pub struct Answer {
    pub parts: hyper::http::response::Parts,
    pub body: Body,
}

pub enum Body {
    Whole(Bytes),
    Streaming(hyper::body::Incoming),
}

pub(crate) async fn connect(
    url: &url::Url,
    ca_bundle: Option<&str>,
) -> Result<Stream, UpstreamError> {
    let host = url
        .host_str()
        .ok_or_else(|| UpstreamError::Unreachable("no host".to_owned()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| UpstreamError::Unreachable(e.kind().to_string()))?;
    let _ = tcp.set_nodelay(true);
    if url.scheme() == "https" {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| UpstreamError::Unreachable("bad server name".to_owned()))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config(ca_bundle))
            .connect(name, tcp)
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("TLS: {e}")))?;
        Ok(Either::Right(Box::new(tls)))
    } else {
        Ok(Either::Left(tcp))
    }
}

/// Sends `req` (whose URI is the full upstream URL) with `timeout` for the answer's head and,
/// for small answers, its body.
pub async fn send(
    url: &url::Url,
    req: hyper::Request<Full<Bytes>>,
    timeout: Duration,
    ca_bundle: Option<&str>,
) -> Result<Answer, UpstreamError> {
    match tokio::time::timeout(timeout, send_inner(url, req, ca_bundle)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}

async fn send_inner(
    url: &url::Url,
    req: hyper::Request<Full<Bytes>>,
    ca_bundle: Option<&str>,
) -> Result<Answer, UpstreamError> {
    let key = format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    );
    let pool = Arc::clone(lock(pools()).entry(key).or_insert_with(|| {
        Arc::new(Pool {
            idle: Mutex::default(),
        })
    }));
    // A pooled connection may have been closed by Epic meanwhile (seen as a close, a reset or a
    // broken pipe): one retry on a fresh one for requests that are safe to repeat.
    let reused = lock(&pool.idle).pop();
    let retry_safe = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
    match reused {
        Some(c) if retry_safe => {
            let copy = clone_request(&req);
            match exchange(&pool, c, req).await {
                Err(_) => exchange(&pool, open(url, ca_bundle).await?, copy)
                    .await
                    .map_err(Failure::into_error),
                Ok(answer) => Ok(answer),
            }
        }
        Some(c) => exchange(&pool, c, req).await.map_err(Failure::into_error),
        None => exchange(&pool, open(url, ca_bundle).await?, req)
            .await
            .map_err(Failure::into_error),
    }
}

async fn open(url: &url::Url, ca_bundle: Option<&str>) -> Result<Conn, UpstreamError> {
    let io = connect(url, ca_bundle).await?;
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
    Ok(Conn {
        sender,
        conn: Box::pin(conn),
    })
}

fn clone_request(req: &hyper::Request<Full<Bytes>>) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone());
    for (k, v) in req.headers() {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::new())).unwrap_or_default()
}

enum Failure {
    /// The connection was closed before an answer (a stale keepalive connection).
    Closed,
    Other(String),
}

impl Failure {
    fn into_error(self) -> UpstreamError {
        match self {
            Self::Closed => UpstreamError::Unreachable("connection closed".to_owned()),
            Self::Other(m) => UpstreamError::Unreachable(m),
        }
    }
}

fn closed(e: &hyper::Error) -> Failure {
    if e.is_canceled() || e.is_incomplete_message() || e.is_closed() {
        Failure::Closed
    } else {
        Failure::Other(e.to_string())
    }
}

async fn exchange(
    pool: &Pool,
    mut c: Conn,
    req: hyper::Request<Full<Bytes>>,
) -> Result<Answer, Failure> {
    // An idle connection may have been closed by the other side: find out before sending.
    tokio::select! {
        biased;
        r = c.sender.ready() => r.map_err(|e| closed(&e))?,
        r = &mut c.conn => return Err(r.map_or_else(|e| closed(&e), |()| Failure::Closed)),
    }
    let mut sending = std::pin::pin!(c.sender.send_request(req));
    let (resp, mut open) = tokio::select! {
        biased;
        r = &mut sending => (r.map_err(|e| closed(&e))?, true),
        r = &mut c.conn => {
            // The connection ended; an answer it read before closing still counts. It is there
            // now or never (the ended connection is not polled again, so waiting would hang).
            r.map_err(|e| closed(&e))?;
            let answered = futures_util::FutureExt::now_or_never(&mut sending).ok_or(Failure::Closed)?;
            (answered.map_err(|e| closed(&e))?, false)
        }
    };
    let (parts, body) = resp.into_parts();
    let small = hyper::body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n <= SMALL_BODY);
    if !small {
        // Large or unsized: the connection goes to its own task (if it is still open) and the
        // body streams.
        if open {
            let conn = c.conn;
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        return Ok(Answer {
            parts,
            body: Body::Streaming(body),
        });
    }
    let mut collecting = std::pin::pin!(body.collect());
    let bytes = if open {
        tokio::select! {
            biased;
            b = &mut collecting => b.map_err(|e| Failure::Other(e.to_string()))?.to_bytes(),
            r = &mut c.conn => {
                // The connection ended, possibly right after a complete answer (a server that
                // closes after answering): the body says which.
                r.map_err(|e| closed(&e))?;
                open = false;
                futures_util::FutureExt::now_or_never(&mut collecting)
                    .ok_or_else(|| Failure::Other("the connection closed in the answer body".to_owned()))?
                    .map_err(|e| Failure::Other(e.to_string()))?
                    .to_bytes()
            }
        }
    } else {
        collecting
            .await
            .map_err(|e| Failure::Other(e.to_string()))?
            .to_bytes()
    };
    let keep = open
        && !parts
            .headers
            .get(hyper::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if keep {
        let mut idle = lock(&pool.idle);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }
    Ok(Answer {
        parts,
        body: Body::Whole(bytes),
    })
}

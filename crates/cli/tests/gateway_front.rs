//! The front door's own HTTP/1.1 path for gateway FHIR reads, against a scripted upstream that
//! answers in every framing HTTP/1.1 allows: whole, chunked (an Epic URL split across chunks),
//! large, until the connection closes, without a body, and keepalive connections the upstream
//! drops while idle. Over raw sockets: pipelined requests, a connection handed to hyper halfway,
//! `Connection: close`, and a shutdown with idle connections open.
#![allow(clippy::unwrap_used, reason = "test helpers fail loudly on purpose")]

mod common;

use common::{TestServer, created};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A scripted stand-in for Epic: answers by path, remembers every request head, counts
/// connections.
struct Upstream {
    base: String,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<usize>>,
}

fn answer(path: &str, base: &str) -> (Vec<u8>, bool) {
    let json = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\netag: W/\"1\"\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    match path {
        "/fhir/Patient/small" => (
            json(&format!(r#"{{"resourceType":"Patient","id":"small","link":"{base}/Patient/small"}}"#)),
            false,
        ),
        "/fhir/Patient/chunked" => {
            // Epic's base split across three chunks.
            let body = format!(r#"{{"resourceType":"Bundle","link":[{{"url":"{base}/Patient?page=2"}}]}}"#);
            let cut1 = body.find("127.0").unwrap();
            let cut2 = cut1 + 8;
            let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for part in [&body[..cut1], &body[cut1..cut2], &body[cut2..]] {
                out.extend_from_slice(format!("{:x};ext=1\r\n{part}\r\n", part.len()).as_bytes());
            }
            out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
            (out, false)
        }
        "/fhir/Patient/big" => {
            let entries: Vec<String> = (0..2_000)
                .map(|i| format!(r#"{{"fullUrl":"{base}/Patient/p{i}"}}"#))
                .collect();
            (
                json(&format!(r#"{{"resourceType":"Bundle","entry":[{}]}}"#, entries.join(","))),
                false,
            )
        }
        "/fhir/Patient/until-close" => (
            format!(
                "HTTP/1.0 200 OK\r\ncontent-type: application/fhir+json\r\n\r\n{{\"resourceType\":\"Patient\",\"id\":\"c\",\"link\":\"{base}/Patient/c\"}}"
            )
            .into_bytes(),
            true,
        ),
        "/fhir/Patient/unchanged" => (
            b"HTTP/1.1 304 Not Modified\r\netag: W/\"1\"\r\n\r\n".to_vec(),
            false,
        ),
        "/fhir/Patient/missing" => {
            let body = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#;
            (
                format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
                false,
            )
        }
        // Answers, then drops the keepalive connection without saying so (an idle timeout).
        _ => (json(r#"{"resourceType":"Patient","id":"drop"}"#), true),
    }
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (h, c, b) = (Arc::clone(&heads), Arc::clone(&connections), base.clone());
    tokio::spawn(async move {
        loop {
            let (mut io, _) = listener.accept().await.unwrap();
            *c.lock().unwrap() += 1;
            let (h, b) = (Arc::clone(&h), b.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match io.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8(buf.drain(..end).collect()).unwrap();
                    let path = head.split(' ').nth(1).unwrap().to_owned();
                    h.lock().unwrap().push(head);
                    let (bytes, close) = answer(&path, &b);
                    io.write_all(&bytes).await.unwrap();
                    if close {
                        return;
                    }
                }
            });
        }
    });
    Upstream {
        base,
        heads,
        connections,
    }
}

/// A gateway `front` over the scripted upstream, an app allowed to read patients, its token.
async fn setup(s: &TestServer, up: &Upstream) -> (String, String) {
    let adapter = created(
        s.post(
            &s.admin_token,
            "/gateway/adapters",
            json!({"name": "scripted", "settings": {"epicR4Endpoint": up.base, "useStagingEnvironment": true}}),
        )
        .await,
    )
    .await;
    let gateway = created(
        s.post(
            &s.admin_token,
            "/gateway/gateways",
            json!({"name": "front", "adapter_id": adapter["id"]}),
        )
        .await,
    )
    .await;
    let app = created(
        s.post(
            &s.admin_token,
            "/gateway/apps",
            json!({"name": "reader", "scopes": "system/Patient.read"}),
        )
        .await,
    )
    .await;
    created(
        s.post(
            &s.admin_token,
            "/gateway/activations",
            json!({"app_id": app["app"]["id"], "gateway_id": gateway["id"], "ehr_auth": "none"}),
        )
        .await,
    )
    .await;
    let t: Value = s
        .http
        .post(format!(
            "{}/auth/token?grant_type=client_credentials",
            s.url
        ))
        .basic_auth(
            app["app"]["client_id"].as_str().unwrap(),
            app["client_secret"].as_str(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        gateway["fhir_base"].as_str().unwrap().to_owned(),
        t["access_token"].as_str().unwrap().to_owned(),
    )
}

async fn read(http: &reqwest::Client, fhir: &str, token: &str, what: &str) -> reqwest::Response {
    http.get(format!("{fhir}/Patient/{what}"))
        .bearer_auth(token)
        .header("if-none-match", "W/\"0\"")
        .send()
        .await
        .unwrap()
}

/// Two ways in: a new client's connection starts with a read, so the front door keeps it; the
/// server's admin client has sent other requests on its connections, so hyper serves them.
fn clients(s: &TestServer) -> [(&'static str, reqwest::Client); 2] {
    [
        ("front door", reqwest::Client::new()),
        ("hyper", s.http.clone()),
    ]
}

/// Every framing through one client (`way` names it in failures).
async fn framings(way: &str, http: &reqwest::Client, fhir: &str, token: &str) {
    let r = read(http, fhir, token, "small").await;
    assert_eq!(r.status(), 200, "{way}");
    assert_eq!(
        r.headers()["content-type"],
        "application/fhir+json",
        "{way}"
    );
    assert_eq!(r.headers()["etag"], "W/\"1\"", "{way}");
    assert!(r.headers().contains_key("x-request-id"), "{way}");
    assert!(r.headers().contains_key("date"), "{way}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["link"], format!("{fhir}/Patient/small"), "{way}");

    let r = read(http, fhir, token, "chunked").await;
    assert_eq!(r.status(), 200, "{way}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["link"][0]["url"],
        format!("{fhir}/Patient?page=2"),
        "{way}"
    );

    let r = read(http, fhir, token, "big").await;
    assert_eq!(r.status(), 200, "{way}");
    let v: Value = r.json().await.unwrap();
    let entries = v["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2_000, "{way}");
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(i, e)| e["fullUrl"] == format!("{fhir}/Patient/p{i}")),
        "{way}: every URL of the streamed bundle is the gateway's"
    );

    let r = read(http, fhir, token, "until-close").await;
    assert_eq!(r.status(), 200, "{way}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["link"], format!("{fhir}/Patient/c"), "{way}");

    let r = read(http, fhir, token, "unchanged").await;
    assert_eq!(r.status(), 304, "{way}");
    assert_eq!(r.headers()["etag"], "W/\"1\"", "{way}");

    let r = read(http, fhir, token, "missing").await;
    assert_eq!(r.status(), 404, "{way}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["resourceType"], "OperationOutcome", "{way}");
}

server_test!(every_framing_of_an_answer_is_relayed_and_rewritten, |s| {
    let up = start_upstream().await;
    let (fhir, token) = setup(s, &up).await;
    for (way, http) in clients(s) {
        framings(way, &http, &fhir, &token).await;
    }

    // What Epic was sent: the path under its base, the default Accept, the app's conditional
    // header, and nothing of the app's own credentials.
    let heads = up.heads.lock().unwrap().clone();
    let first = &heads[0];
    assert!(
        first.starts_with("GET /fhir/Patient/small HTTP/1.1\r\n"),
        "{first}"
    );
    assert!(
        first.contains("accept: */*\r\n"),
        "the app's Accept: {first}"
    );
    assert!(first.contains("if-none-match: W/\"0\"\r\n"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("authorization"),
        "{first}"
    );
});

server_test!(an_upstream_connection_dropped_while_idle_is_replaced, |s| {
    let up = start_upstream().await;
    let (fhir, token) = setup(s, &up).await;
    for (way, http) in clients(s) {
        for _ in 0..3 {
            let r = read(&http, &fhir, &token, "drop").await;
            let status = r.status();
            let body = r.text().await.unwrap();
            assert_eq!(
                status, 200,
                "{way}: a read after Epic dropped the connection: {body}"
            );
        }
    }
    assert!(*up.connections.lock().unwrap() >= 6);
});

/// Reads one HTTP/1.1 answer with a `content-length` body off a raw socket.
async fn raw_answer(io: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + len {
                let body = String::from_utf8(buf[end..end + len].to_vec()).unwrap();
                buf.drain(..end + len);
                return (head, body);
            }
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

server_test!(pipelined_reads_then_a_handoff_share_one_connection, |s| {
    let up = start_upstream().await;
    let (fhir, token) = setup(s, &up).await;
    let path = fhir.trim_start_matches(&s.url).to_owned();
    let mut io = TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let read = |what: &str, id: &str| {
        format!(
            "GET {path}/Patient/{what} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-request-id: {id}\r\n\r\n"
        )
    };
    // Two reads the front door answers, then requests only hyper serves, in one write.
    let pipelined = format!(
        "{}{}GET /readyz HTTP/1.1\r\nhost: x\r\n\r\nGET {path}/Patient/small HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-request-id: r4\r\n\r\n",
        read("small", "r1"),
        read("missing", "r2")
    );
    io.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let (h1, b1) = raw_answer(&mut io, &mut buf).await;
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains("x-request-id: r1\r\n"), "{h1}");
    assert!(b1.contains("\"small\""), "{b1}");
    let (h2, _) = raw_answer(&mut io, &mut buf).await;
    assert!(h2.starts_with("HTTP/1.1 404"), "{h2}");
    assert!(h2.contains("x-request-id: r2\r\n"), "{h2}");
    let (h3, _) = raw_answer(&mut io, &mut buf).await;
    assert!(
        h3.starts_with("HTTP/1.1 200"),
        "readyz after the handoff: {h3}"
    );
    let (h4, b4) = raw_answer(&mut io, &mut buf).await;
    assert!(
        h4.starts_with("HTTP/1.1 200"),
        "a read served by hyper: {h4}"
    );
    assert!(
        h4.to_ascii_lowercase().contains("x-request-id: r4\r\n"),
        "{h4}"
    );
    let v: Value = serde_json::from_str(&b4).unwrap();
    assert_eq!(v["link"], format!("{fhir}/Patient/small"));
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        heads
            .iter()
            .all(|h| h.contains("accept: application/fhir+json\r\n")),
        "FHIR JSON when the app names no type: {heads:?}"
    );

    // `Connection: close`: the answer says so and the connection ends.
    let mut io = TcpStream::connect(s.url.trim_start_matches("http://"))
        .await
        .unwrap();
    io.write_all(
        format!("GET {path}/Patient/small HTTP/1.1\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let all = String::from_utf8(all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("connection: close\r\n"), "{all}");

    // A bad token on the front door's path: the same OperationOutcome as the handler's.
    let r = s
        .http
        .get(format!("{fhir}/Patient/small"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_and_finishes_reads_in_flight() {
    let s = TestServer::sqlite().await;
    let up = start_upstream().await;
    let (fhir, token) = setup(&s, &up).await;
    // One idle connection on the front door's path, one handed to hyper.
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut fast = TcpStream::connect(&addr).await.unwrap();
    let path = fhir.trim_start_matches(&s.url).to_owned();
    fast.write_all(
        format!("GET {path}/Patient/small HTTP/1.1\r\nauthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let (h, _) = raw_answer(&mut fast, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let mut handed = TcpStream::connect(&addr).await.unwrap();
    handed
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (h, _) = raw_answer(&mut handed, &mut buf).await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let stopped = tokio::time::timeout(Duration::from_secs(10), s.stop()).await;
    assert!(
        stopped.is_ok(),
        "the server stopped with idle connections open"
    );
    for mut io in [fast, handed] {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "idle connections are closed without an answer");
    }
}

//! A minimal stand-in for a relay node, enough to test the load generator without the real
//! server: `GET /ws?token=JWT` (HS256 checked), welcome frame, `POST /events` (single or
//! batch, API key checked) fanned out to the session's sockets in order, and a bounded
//! per-socket queue that closes slow readers with 4008. Not a reference for the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const SECRET: &str = "mock-secret-0123456789abcdef0123456789";
pub const API_KEY: &str = "mock-key";

enum Msg {
    Frame(Arc<Vec<u8>>),
    Close(u16),
}

struct Sock {
    tx: mpsc::UnboundedSender<Msg>,
    queued: Arc<AtomicUsize>,
}

#[derive(Default)]
struct State {
    sessions: Mutex<HashMap<String, Vec<Sock>>>,
    next_id: AtomicU64,
    max_queue: usize,
}

/// A running mock node; dropping it does not stop it (the test process ends it).
pub struct Mock {
    pub addr: SocketAddr,
}

impl Mock {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts the mock on its own thread and runtime. `max_queue`: bytes per socket before 4008.
pub fn start(max_queue: usize) -> Mock {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let state = Arc::new(State {
                max_queue,
                ..State::default()
            });
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, state.clone()));
            }
        });
    });
    Mock {
        addr: rx.recv().expect("mock address"),
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 65535 {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(r.as_bytes()).await
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Read one request head.
        let (head_len, method, path, content_length, key, auth) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let find = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let cl = find("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                break (
                    n,
                    req.method.unwrap_or("").to_owned(),
                    req.path.unwrap_or("").to_owned(),
                    cl,
                    find("sec-websocket-key"),
                    find("authorization"),
                );
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + content_length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);
        if method == "GET" && path.starts_with("/ws?token=") {
            let token = &path["/ws?token=".len()..];
            return upgrade(stream, state, token, key).await;
        }
        if method == "POST" && path == "/events" {
            if auth.as_deref() != Some(&format!("Bearer {API_KEY}")) {
                let _ = respond(
                    &mut stream,
                    "401 Unauthorized",
                    r#"{"error":"unauthorized","message":"key"}"#,
                )
                .await;
                continue;
            }
            let n = publish(&state, &body);
            let _ = respond(
                &mut stream,
                "202 Accepted",
                &format!(r#"{{"accepted":{n}}}"#),
            )
            .await;
            continue;
        }
        let _ = respond(
            &mut stream,
            "404 Not Found",
            r#"{"error":"not_found","message":"?"}"#,
        )
        .await;
    }
}

fn publish(state: &State, body: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let events = match v.get("events").and_then(|e| e.as_array()) {
        Some(list) => list.clone(),
        None => vec![v],
    };
    let mut sessions = state.sessions.lock().expect("lock");
    for e in &events {
        let session = e["session"].as_str().unwrap_or("").to_owned();
        let id = state.next_id.fetch_add(1, Ordering::Relaxed);
        let text = format!(
            r#"{{"type":"event","session":"{session}","event":{},"id":"{id}","data":{}}}"#,
            e["event"], e["data"]
        );
        let f = Arc::new(frame(0x1, text.as_bytes()));
        if let Some(list) = sessions.get_mut(&session) {
            list.retain(|s| {
                let q = s.queued.fetch_add(f.len(), Ordering::AcqRel) + f.len();
                if q > state.max_queue {
                    let _ = s.tx.send(Msg::Close(4008));
                    return false;
                }
                s.tx.send(Msg::Frame(f.clone())).is_ok()
            });
        }
    }
    events.len()
}

#[derive(serde::Deserialize)]
struct Claims {
    session: String,
}

async fn upgrade(mut stream: TcpStream, state: Arc<State>, token: &str, key: Option<String>) {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    let claims = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes())
        .ok()
        .and_then(|k| jsonwebtoken::decode::<Claims>(token, &k, &validation).ok())
        .map(|d| d.claims);
    let (Some(claims), Some(key)) = (claims, key) else {
        let _ = respond(
            &mut stream,
            "401 Unauthorized",
            r#"{"error":"unauthorized","message":"token"}"#,
        )
        .await;
        return;
    };
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let welcome = format!(
        r#"{{"type":"welcome","session":"{}","conn":"{id}"}}"#,
        claims.session
    );
    if stream
        .write_all(&frame(0x1, welcome.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    state
        .sessions
        .lock()
        .expect("lock")
        .entry(claims.session)
        .or_default()
        .push(Sock {
            tx,
            queued: queued.clone(),
        });
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            match m {
                Msg::Frame(f) => {
                    if wr.write_all(&f).await.is_err() {
                        return;
                    }
                    queued.fetch_sub(f.len(), Ordering::AcqRel);
                }
                Msg::Close(code) => {
                    let _ = wr.write_all(&frame(0x8, &code.to_be_bytes())).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        }
    });
    // The reader only waits for the client to go away.
    let mut b = vec![0u8; 4096];
    loop {
        match rd.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    writer.abort();
}

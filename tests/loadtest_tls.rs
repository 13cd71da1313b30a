//! The load generator through TLS, as it would reach a staging relay behind a
//! TLS-terminating load balancer, but on loopback: a tokio-rustls proxy (certificate from
//! a CA the `openssl` CLI makes at test time) in front of a real node. Seconds-long
//! fan-outs over `wss://` (WebSockets) and `https://` (event streams, long-polls; the
//! publisher's POSTs) lose nothing, with `--ca-file` trusting the test CA.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use loadtest::target::TargetOptions;
use loadtest::{run, scenario, RunOptions};
use tokio_rustls::TlsAcceptor;

/// Starts a TLS-terminating proxy on 127.0.0.1:0 in front of `upstream`, on its own
/// thread and runtime (ended with the test process); returns its port.
fn start_proxy(pki: &Path, upstream: std::net::SocketAddr) -> u16 {
    let acceptor = TlsAcceptor::from(server_config(pki));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut node) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = node.set_nodelay(true);
                    let _ = tls.get_ref().0.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut node).await;
                });
            }
        });
    });
    port
}

fn opts(ca: PathBuf) -> RunOptions {
    RunOptions {
        secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        procs: 1,
        threads: Some(2),
        // localhost is loopback: no --allow-remote, as every test here stays on the machine.
        targets: TargetOptions {
            ca_file: Some(ca),
            ..TargetOptions::default()
        },
        ..RunOptions::default()
    }
}

/// A 2-second fan-out through the proxy: `sessions` × 5 subscribers on `transport`,
/// `rate` events/s published over https://.
fn fanout_through_tls(url_scheme: &str, transport: &str, sessions: u64, rate: u64) -> Node {
    let node = Node::builder().flag("--connect-rate", "0").start();
    let pki = make_pki("proxy");
    let port = start_proxy(&pki, node.addr);
    let scn = scenario::from_str(
        &format!(
            "kind = \"fanout\"\nurl = \"https://localhost:{port}\"\nnodes = [\"{url_scheme}://localhost:{port}\"]\nsessions = {sessions}\nsockets_per_session = 5\nrate = {rate}\nduration = \"2s\"\nbatch = 1\n"
        ),
        &[format!("transport={transport}")],
    )
    .expect("scenario");
    let r = run(&scn, &opts(pki.join("ca.pem"))).expect("run");
    assert!(r.passed, "{transport}: {:?} {:?}", r.failures, r.errors);
    assert!(r.errors.is_empty(), "{transport}: {:?}", r.errors);
    assert_eq!(r.sockets_connected, sessions * 5, "{transport}");
    assert_eq!(r.events_accepted, 2 * rate, "{transport}");
    assert_eq!(r.lost, 0, "{transport}");
    assert_eq!(r.excess, 0, "{transport}");
    assert_eq!(r.deliveries, 2 * rate * 5, "{transport}");
    node
}

#[test]
fn fanout_over_wss_with_a_ca_file_loses_nothing() {
    let node = fanout_through_tls("wss", "ws", 10, 300);
    assert_eq!(
        node.metric("relay_deliveries_total", &[("transport", "ws")]),
        3000.0
    );
}

#[test]
fn fanout_over_https_event_streams_and_long_polls_loses_nothing() {
    fanout_through_tls("https", "sse", 10, 300);
    // Every poll answer is a new TLS connection through the proxy: keep it light.
    fanout_through_tls("https", "poll", 5, 100);
}

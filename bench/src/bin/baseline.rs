//! `baseline`: the smallest hyper server that answers `GET /state` like primgr does, the yardstick
//! of the benchmark (`primgr-bench`, `contrib/bench`).
//!
//! ```text
//! baseline LISTEN STATUS BODY      e.g.  baseline 127.0.N.10:5999 200 '{"state":"Primary"}'
//! ```
//!
//! It has primgr's runtime shape (tokio multi-thread, 2 workers, `TCP_NODELAY`, HTTP/1.1
//! keep-alive) and answers `/state` with the given status and body and the same headers as
//! primgr (`content-type: application/json`, `cache-control: no-store`; hyper adds
//! `content-length` and `date`); any other path gets an empty 404. It reads no snapshot, routes
//! nothing else and has no limits or timeouts: whatever primgr costs beyond it is primgr's own
//! overhead. Runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: baseline LISTEN STATUS BODY   (e.g. baseline 127.0.N.10:5999 200 '{\"state\":\"Primary\"}')";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, status, body] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("baseline: bad listen address {listen:?}\n{USAGE}");
        return ExitCode::from(64);
    };
    let Some(status) = status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
    else {
        eprintln!("baseline: bad status {status:?}\n{USAGE}");
        return ExitCode::from(64);
    };
    let body = Bytes::from(body.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen, status, body)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baseline: {e}");
            ExitCode::from(69)
        }
    }
}

async fn serve(listen: SocketAddr, status: StatusCode, body: Bytes) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let http = hyper::server::conn::http1::Builder::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let reply = if req.uri().path() == "/state" {
                let mut r = Response::new(Full::new(body.clone()));
                *r.status_mut() = status;
                let h = r.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            } else {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            };
            async move { Ok::<_, Infallible>(reply) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

//! The baseline's server: the smallest hyper 1 server that answers `GET /state` like primgr,
//! shared by the `baseline` binary (`bin/baseline.rs`, measured from outside) and the
//! allocation count of `primgr-bench` (`allocations.rs`, measured in-process).
//!
//! It answers `/state` with the given status and body and the same headers as primgr
//! (`content-type: application/json`, `cache-control: no-store`; hyper adds `content-length`
//! and `date`); any other path gets an empty 404. Each connection: `TCP_NODELAY`, hyper's
//! `http1::Builder` as it comes (HTTP/1.1 keep-alive, no timer, so no head timeout). It reads
//! no snapshot, routes nothing else and has no limits or timeouts: whatever primgr costs
//! beyond it is primgr's own.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves on `listener` until the task is dropped (or accepting fails for good).
pub async fn serve(listener: TcpListener, status: StatusCode, body: Bytes) {
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

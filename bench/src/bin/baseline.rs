//! `baseline`: the smallest hyper server that answers `GET /state` like primgr does, the yardstick
//! of the benchmark (`primgr-bench`, `contrib/bench`).
//!
//! ```text
//! baseline LISTEN STATUS BODY      e.g.  baseline 127.0.N.10:5999 200 '{"state":"Primary"}'
//! ```
//!
//! As a new user would write it: `#[tokio::main]` (tokio's multi-thread runtime, one worker
//! per CPU), `TCP_NODELAY`, hyper 1's `http1::Builder` as it comes; the server itself is
//! `hello.rs`. Runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use hyper::StatusCode;

#[path = "../hello.rs"]
mod hello;

const USAGE: &str = "usage: baseline LISTEN STATUS BODY   (e.g. baseline 127.0.N.10:5999 200 '{\"state\":\"Primary\"}')";

#[tokio::main]
async fn main() -> ExitCode {
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
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            hello::serve(listener, status, Bytes::from(body.clone())).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("baseline: {e}");
            ExitCode::from(69)
        }
    }
}

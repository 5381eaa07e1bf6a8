//! A tiny HTTP/1.1 GET client over a tokio `TcpStream` (`Connection: close`), enough to query
//! primgr's `/state`, `/primary` and `/realPrimary` from tests and the demo without pulling in
//! an HTTP stack. Handles `Content-Length`, chunked and read-to-close bodies.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A response: status code and body (lossy UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// `GET path` from `addr`, the whole exchange bounded by `timeout`.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    get_from(None, addr, path, timeout).await
}

/// Like [`get`], binding the client socket to `source` first (needed for iptables cuts between
/// node addresses: without a bind, loopback connections have source 127.0.0.1).
pub async fn get_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    tokio::time::timeout(timeout, exchange(source, addr, path))
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: timed out after {timeout:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

async fn exchange(source: Option<IpAddr>, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))
            .with_context(|| format!("binding source address {src}"))?;
    }
    let mut stream = sock.connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: primgr-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// Parse a complete HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        } else if k == "content-length" {
            length = v.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body[..n.min(body.len())].to_vec()
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("truncated chunked body"))?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size_hex = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_hex:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() -> Result<()> {
        let r = parse_response(b"HTTP/1.1 202 Accepted\r\ncontent-length: 7\r\n\r\nStandby")?;
        assert_eq!((r.status, r.body.as_str()), (202, "Standby"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nPrim\r\n3\r\nary\r\n0\r\n\r\n",
        )?;
        assert_eq!((r.status, r.body.as_str()), (200, "Primary"));
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nDown")?;
        assert_eq!((r.status, r.body.as_str()), (503, "Down"));
        assert!(parse_response(b"garbage").is_err());
        Ok(())
    }
}

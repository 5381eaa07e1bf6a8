//! The raw HTTP/1.1 exchange the tests, the demo and the benchmark share, without an HTTP stack:
//!
//! - client side: [`get`] / [`get_from`] (a `GET` with `Connection: close`, the body decoded
//!   into an [`HttpResponse`]), [`request`] (any request bytes, the answer as it came over the
//!   wire: a [`RawResponse`]), [`exchange`] (bytes in, bytes out), and [`status_code`] for
//!   clients that read only the status line;
//! - server side (fake peers): [`read_head`] reads one request head off a connection, and
//!   [`response`] writes a complete response with its `Content-Length`.
//!
//! Bodies with `Content-Length`, chunked bodies and bodies read to the close are understood.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// A response: status code and decoded body (lossy UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// A response as it came over the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code, e.g. 200.
    pub status: u16,
    /// The whole status line, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    /// Header fields in order, names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// Everything after the head, as sent (not de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a complete HTTP/1.x response.
    pub fn parse(raw: &[u8]) -> Result<RawResponse> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("no end of headers in {} bytes", raw.len()))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_code(status_line.as_bytes())
            .ok_or_else(|| anyhow!("not an HTTP/1 status line: {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(RawResponse {
            status,
            status_line,
            headers,
            body: raw[split + 4..].to_vec(),
        })
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body with the transfer coding undone: de-chunked, or cut at `Content-Length`.
    pub fn decoded_body(&self) -> Result<Vec<u8>> {
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return dechunk(&self.body);
        }
        match self
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) => Ok(self.body[..n.min(self.body.len())].to_vec()),
            None => Ok(self.body.clone()),
        }
    }
}

/// The status code of an HTTP/1 status line (`HTTP/1.1 503 Service Unavailable`), if it is one.
pub fn status_code(line: &[u8]) -> Option<u16> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
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
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: primgr-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let raw = exchange(source, addr, req.as_bytes(), timeout)
        .await
        .with_context(|| format!("GET http://{addr}{path}"))?;
    parse_response(&raw).with_context(|| format!("GET http://{addr}{path}"))
}

/// Sends `request` (complete bytes, which should ask for `Connection: close`) on a new
/// connection to `addr` and returns the response as it came, the whole exchange bounded by
/// `timeout`.
pub async fn request(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<RawResponse> {
    let raw = exchange(None, addr, request, timeout).await?;
    RawResponse::parse(&raw).with_context(|| format!("response of {addr}"))
}

/// Connects to `addr` (from `source` if given), writes `request`, reads until the server
/// closes; the whole exchange bounded by `timeout`.
pub async fn exchange(
    source: Option<IpAddr>,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let io = async {
        let sock = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(src) = source {
            sock.bind(SocketAddr::new(src, 0))
                .with_context(|| format!("binding source address {src}"))?;
        }
        let mut stream = sock.connect(addr).await?;
        stream.write_all(request).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| anyhow!("exchange with {addr}: timed out after {timeout:?}"))?
        .with_context(|| format!("exchange with {addr}"))
}

/// Parse a complete HTTP/1.x response and decode its body.
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let r = RawResponse::parse(raw)?;
    Ok(HttpResponse {
        status: r.status,
        body: String::from_utf8_lossy(&r.decoded_body()?).into_owned(),
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

/// Reads from `stream` into `buf` until `buf` holds a whole request head (up to and including
/// the blank line); returns the head's length. `Ok(None)` when the peer closed first or the head
/// grew beyond `max` bytes. Bytes after the head (a pipelined request) stay in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > max {
            return Ok(None);
        }
        match stream.read(&mut chunk).await? {
            0 => return Ok(None),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete response: `HTTP/1.1 <status>`, the `headers` lines as given (each ending in
/// `\r\n`), `Content-Length` of `body`, the blank line and `body`.
pub fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
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
        assert!(parse_response(b"SSH-2.0 200 x\r\n\r\n").is_err());
        Ok(())
    }

    #[test]
    fn raw_response_keeps_the_wire_form() -> Result<()> {
        let wire = response("200 OK", "Content-Type: application/json\r\n", b"{}");
        assert_eq!(
            String::from_utf8_lossy(&wire),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let r = RawResponse::parse(&wire)?;
        assert_eq!(r.status_line, "HTTP/1.1 200 OK");
        assert_eq!(r.header("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body, b"{}");
        assert_eq!(status_code(b"HTTP/1.1 413 Payload Too Large"), Some(413));
        assert_eq!(status_code(b"garbage"), None);
        Ok(())
    }

    #[tokio::test]
    async fn reads_one_head_and_keeps_the_rest() -> Result<()> {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next")
            .await?;
        drop(a);
        let mut buf = Vec::new();
        let end = read_head(&mut b, &mut buf, 1024).await?;
        assert_eq!(end, Some(27));
        assert!(buf[27..].starts_with(b"GET /n"));
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[b'x'; 60]).await?;
        let mut buf = Vec::new();
        assert_eq!(read_head(&mut b, &mut buf, 50).await?, None);
        Ok(())
    }
}

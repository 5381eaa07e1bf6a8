//! The haproxy agent-check port: one line per connection, from the snapshot.
//!
//! Owns the agent protocol and its limits; the line itself is a [`crate::wire::AgentLine`].
//! haproxy connects, sends its `agent-send` string (this agent reads `write` or `read`;
//! anything else, or nothing within [`READ_TIMEOUT`], means `read`), reads one line and
//! applies it at once, without `fall`/`rise`:
//! - write pool: `up ready 100%` while `/state` answers 200, else `down #<state>: <reason>`;
//! - read pool: `drain #...` for a drained node (haproxy stops sending it new connections);
//!   `down #<reason>` unless the `/replica` rule holds with a known lag; otherwise
//!   `up ready N%`, where N is 100 up to `agent_lag_soft` of replay lag, falls linearly to
//!   10 at `agent_lag_hard`, and beyond that the answer is `down`. An unknown lag is `down`.
//!
//! Hostile input gets the HTTP port's treatment: at most [`MAX_CONNECTIONS`] at once (more
//! are closed at once), at most [`MAX_REQUEST`] bytes read, a silent client waits at most
//! [`READ_TIMEOUT`] and a client that does not read its answer at most [`WRITE_TIMEOUT`].
//! No database traffic: the answer comes from the snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

use crate::config::Config;
use crate::decide::State;
use crate::reads::{self, ReadQuery};
use crate::server::Admission;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
use crate::units::format_size;
use crate::wire::AgentLine;

/// Most agent connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Longest `agent-send` string read; the rest is ignored.
pub const MAX_REQUEST: usize = 64;
/// How long to wait for the `agent-send` string before answering for the read pool.
pub const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the answer may take to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Which pool asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Write,
    Read,
}

impl Pool {
    /// The pool an `agent-send` string names: `write`, else read.
    pub fn from_request(text: &[u8]) -> Pool {
        match String::from_utf8_lossy(text)
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "write" => Pool::Write,
            _ => Pool::Read,
        }
    }
}

/// The agent's line for `pool` at `now` (with its newline).
pub fn answer(s: &Snapshot, config: &Config, pool: Pool, now: Instant) -> String {
    let line = match pool {
        Pool::Write => match s.served_state(now) {
            State::Primary => AgentLine::Up { weight: 100 },
            state => AgentLine::Down(format!("{state}: {}", s.served_reason(now))),
        },
        Pool::Read => read_answer(s, config, now),
    };
    format!("{line}\n")
}

fn read_answer(s: &Snapshot, config: &Config, now: Instant) -> AgentLine {
    if let Some(d) = &s.drained {
        return AgentLine::Drain(format!("drained: {}", d.reason));
    }
    if let Err(why) = reads::replica(s, &ReadQuery::default(), now) {
        return AgentLine::Down(why);
    }
    let lag = match s.replication.as_ref().map(|r| r.lag()) {
        Some(Ok(lag)) => lag,
        Some(Err(why)) => return AgentLine::Down(format!("lag unknown: {why}")),
        None => return AgentLine::Down("no replication facts".into()),
    };
    match weight(
        lag,
        config.agent.agent_lag_soft,
        config.agent.agent_lag_hard,
    ) {
        Some(weight) => AgentLine::Up { weight },
        None => AgentLine::Down(format!(
            "replay lag {} is above agent_lag_hard {}",
            format_size(lag),
            format_size(config.agent.agent_lag_hard)
        )),
    }
}

/// The weight (percent) of a standby `lag` bytes behind: 100 up to `soft`, falling linearly to
/// 10 at `hard`, None (down) beyond `hard`.
pub fn weight(lag: u64, soft: u64, hard: u64) -> Option<u32> {
    if lag <= soft {
        return Some(100);
    }
    if lag > hard || hard <= soft {
        return None;
    }
    let fraction = (lag - soft) as f64 / (hard - soft) as f64;
    Some((100.0 - 90.0 * fraction).round().clamp(10.0, 100.0) as u32)
}

/// Serves the agent port until `shutdown` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut admit = Admission::new(MAX_CONNECTIONS, "agent");
    loop {
        let (mut stream, _, slot) = tokio::select! {
            _ = shutdown.wait() => return,
            admitted = admit.next(&listener) => admitted,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut request = [0u8; MAX_REQUEST];
            let n = read_line(&mut stream, &mut request, READ_TIMEOUT).await;
            let pool = Pool::from_request(&request[..n]);
            let now = Instant::now();
            let line = answer(&shared.store.peek(), &shared.config(), pool, now);
            let write = async {
                stream.write_all(line.as_bytes()).await?;
                stream.shutdown().await
            };
            if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            {
                debug!("agent: answer not delivered: {e}");
            }
            drop(slot);
        });
    }
}

/// Reads until a newline, the end of the stream, a full buffer, an error or `within`; how
/// many bytes were read. What arrived before the time ran out still counts: an `agent-send
/// "write"` without its newline is the write pool, not the read pool.
async fn read_line(stream: &mut tokio::net::TcpStream, buf: &mut [u8], within: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + within;
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[n..])).await {
            Ok(Ok(got)) if got > 0 => n += got,
            _ => break,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_fall_between_the_bounds() {
        let (soft, hard) = (1 << 20, 16 << 20);
        assert_eq!(weight(0, soft, hard), Some(100));
        assert_eq!(weight(soft, soft, hard), Some(100));
        assert_eq!(weight(soft + (hard - soft) / 2, soft, hard), Some(55));
        assert_eq!(weight(hard, soft, hard), Some(10));
        assert_eq!(weight(hard + 1, soft, hard), None);
        // Monotone: more lag never gets more weight.
        let mut last = 100;
        for lag in (0..=hard).step_by(1 << 16) {
            let w = weight(lag, soft, hard).unwrap();
            assert!(w <= last, "{lag}");
            last = w;
        }
    }

    /// Before the first cycle both pools are told `down`, in lines the wire type reads back.
    #[test]
    fn answers_are_agent_lines() {
        let config = Config::for_node("n1").unwrap();
        let now = Instant::now();
        let s = Snapshot::starting();
        for pool in [Pool::Write, Pool::Read] {
            let text = answer(&s, &config, pool, now);
            assert!(
                text.ends_with('\n') && text.matches('\n').count() == 1,
                "{text:?}"
            );
            let line: AgentLine = text.parse().unwrap();
            assert!(matches!(&line, AgentLine::Down(_)), "{pool:?}: {line:?}");
            assert_eq!(format!("{line}\n"), text);
        }
    }

    #[test]
    fn the_pool_comes_from_agent_send() {
        assert_eq!(Pool::from_request(b"write\n"), Pool::Write);
        assert_eq!(Pool::from_request(b"WRITE"), Pool::Write);
        for other in [&b"read\n"[..], b"", b"writ", b"\xff\xfe", b"write please"] {
            assert_eq!(Pool::from_request(other), Pool::Read, "{other:?}");
        }
    }
}

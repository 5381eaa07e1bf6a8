//! A delaying TCP proxy: distance between sites on one machine. `tc netem` cannot be used here
//! (the kernel has no `sch_netem`), so a test that needs 30–80 ms between two sites routes the
//! traffic that crosses them through a [`DelayProxy`]: it listens on an address of its own,
//! connects every accepted client to one upstream address (from a source address of its own
//! when told, so the lab's address cuts apply to it too), and forwards the bytes of each
//! direction only once each chunk is `delay` old, `delay` drawn for each chunk uniformly from
//! the configured range ([`Delay`]). Chunks keep their order (a chunk never leaves before the
//! one read before it), so a round trip through the proxy costs two draws, and a request and
//! its answer on a kept-alive connection see the delay as a distant peer would. A connection's
//! end (EOF, or an error) travels with the same delay; nothing is reordered, lost or
//! duplicated.
//!
//! The proxy runs on the caller's tokio runtime until [`DelayProxy::stop`] or drop; it counts
//! the connections and bytes it forwarded ([`DelayProxy::stats`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Bound on connecting to the upstream.
const T_CONNECT: Duration = Duration::from_secs(5);

/// How long each direction holds every chunk: uniformly in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delay {
    pub min: Duration,
    pub max: Duration,
}

impl Delay {
    /// A delay drawn for each chunk in `min..=max` (`min <= max`).
    pub fn between(min: Duration, max: Duration) -> Delay {
        Delay { min, max }
    }

    /// Always `d`.
    pub fn fixed(d: Duration) -> Delay {
        Delay { min: d, max: d }
    }

    /// A draw from the range, with `rng` as its source.
    fn draw(&self, rng: &mut Xorshift) -> Duration {
        let span = self.max.saturating_sub(self.min).as_micros() as u64;
        if span == 0 {
            return self.min;
        }
        self.min + Duration::from_micros(rng.next() % (span + 1))
    }
}

/// What a proxy forwarded so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted (each one connected to the upstream, or closed at once when
    /// the upstream refused).
    pub connections: u64,
    /// Bytes forwarded from the clients to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded from the upstream to the clients.
    pub bytes_down: u64,
    /// Connections the upstream refused or did not accept in time.
    pub upstream_failures: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    upstream_failures: AtomicU64,
}

/// A running delaying proxy. See the [module documentation](self).
pub struct DelayProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    delay: Delay,
    counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DelayProxy {
    /// Listens on `listen` (port 0: any) and forwards every connection to `upstream`, each
    /// direction delayed by `delay`; the upstream connections leave from `source` when given.
    /// Needs a tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        source: Option<IpAddr>,
        delay: Delay,
    ) -> Result<DelayProxy> {
        ensure!(
            delay.min <= delay.max,
            "delay range {:?}..{:?} is empty",
            delay.min,
            delay.max
        );
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("delay proxy: binding {listen}"))?;
        let addr = listener
            .local_addr()
            .context("delay proxy: local address")?;
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            source,
            delay,
            counters.clone(),
        ));
        Ok(DelayProxy {
            addr,
            upstream,
            delay,
            counters,
            task: Some(task),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The delay of each direction.
    pub fn delay(&self) -> Delay {
        self.delay
    }

    /// What it forwarded so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
        }
    }

    /// Stops listening and closes every connection it carries.
    pub fn stop(mut self) -> ProxyStats {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.stats()
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Accepts until aborted; every connection runs in the loop's own [`JoinSet`], so aborting the
/// loop ends them all.
async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    source: Option<IpAddr>,
    delay: Delay,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    let mut seed = seed();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                connections.spawn(carry(client, upstream, source, delay, counters.clone(), seed));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connect(upstream: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match upstream {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    match tokio::time::timeout(T_CONNECT, socket.connect(upstream)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One client connection: connect to the upstream, then both directions, each delayed.
async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    source: Option<IpAddr>,
    delay: Delay,
    counters: Arc<Counters>,
    seed: u64,
) {
    let _ = client.set_nodelay(true);
    let server = match connect(upstream, source).await {
        Ok(s) => s,
        Err(_) => {
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = direction(
        client_r,
        server_w,
        delay,
        Xorshift(seed | 1),
        counters.clone(),
        true,
    );
    let down = direction(
        server_r,
        client_w,
        delay,
        Xorshift(seed.rotate_left(17) | 1),
        counters,
        false,
    );
    tokio::join!(up, down);
}

/// One direction: a reader stamps each chunk with when it may leave (never before the chunk
/// read before it), a writer sends it then. EOF or a read error is passed on the same way
/// (the writer shuts its side down); a write error ends the direction.
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Delay,
    mut rng: Xorshift,
    counters: Arc<Counters>,
    up: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = (Instant::now() + delay.draw(&mut rng)).max(last);
            last = due;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            let end = chunk.is_none();
            if tx.send((due, chunk)).is_err() || end {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let bytes = if up {
                &counters.bytes_up
            } else {
                &counters.bytes_down
            };
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    tokio::join!(reader, writer);
}

/// A small pseudo-random source for the delays (no cryptographic need).
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x2545_f491_4f6c_dd1d);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; its address.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Every round trip through the proxy takes at least two draws of the range and the bytes
    /// come back whole and in order.
    #[tokio::test]
    async fn round_trips_take_two_delays_and_keep_the_bytes() {
        let upstream = echo().await;
        let delay = Delay::between(Duration::from_millis(30), Duration::from_millis(40));
        let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), upstream, None, delay)
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut rtts = Vec::new();
        for i in 0..10u8 {
            let msg: Vec<u8> = (0..200).map(|k| k as u8 ^ i).collect();
            let t = std::time::Instant::now();
            s.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            s.read_exact(&mut back).await.unwrap();
            rtts.push(t.elapsed());
            assert_eq!(back, msg, "round trip {i}");
        }
        let (lo, hi) = (rtts.iter().min().unwrap(), rtts.iter().max().unwrap());
        println!("10 round trips through a 30-40 ms proxy: {lo:?} .. {hi:?}");
        assert!(*lo >= Duration::from_millis(60), "{rtts:?}");
        drop(s);
        let stats = proxy.stop();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.bytes_up, 2000);
        assert_eq!(stats.bytes_down, 2000);
    }

    /// A stream of chunks larger than one read arrives in order although each chunk draws its
    /// own delay; the end of the stream comes through.
    #[tokio::test]
    async fn a_long_stream_keeps_its_order_and_its_end() {
        let upstream = echo().await;
        let delay = Delay::between(Duration::from_millis(1), Duration::from_millis(20));
        let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), upstream, None, delay)
            .await
            .unwrap();
        let s = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let data: Vec<u8> = (0..300_000u32).map(|k| (k % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for c in sent.chunks(7_000) {
                w.write_all(c).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(back.len(), data.len());
        assert!(back == data, "bytes reordered");
    }

    #[tokio::test]
    async fn a_refused_upstream_closes_the_client_and_is_counted() {
        // A port nobody listens on: bind one, then drop it.
        let gone = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = DelayProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            gone,
            None,
            Delay::fixed(Duration::from_millis(1)),
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(proxy.stats().upstream_failures, 1);
    }
}

//! `--check-config`'s distance rule: the round trip to every voter's daemon, measured, and the
//! timings it rules out.
//!
//! A candidate in cluster scope asks voters in other sites. Every vote is one exchange with a
//! distant daemon, bounded by `peer_timeout`: an answer that comes later is no vote. In the
//! worst healthy case an exchange costs [`round_trips`] round trips: a new TCP connection
//! (after an idle or failed one), the TLS handshake when the peers speak https, the signed
//! request, and the request sent once more when the voter answers 401 with a fresh replay
//! ticket ([`crate::auth::worth_retrying`]). So the rule, per voter `v` with a measured round
//! trip `rtt(v)` (the largest of [`SAMPLES`] requests on a kept-alive connection):
//!
//! 1. `peer_timeout > k × rtt(v)`, k = [`round_trips`] (3 over http, 4 over https); else the
//!    configuration is refused, naming `peer_timeout` and `v`.
//! 2. `vote_lease` then needs what the load-time rule already asks, with that `peer_timeout`:
//!    a vote counts `counted_for(vote_lease)` = `vote_lease × (1−ρ)/(1+ρ)` after it was
//!    requested ([`crate::vote::LeaseRules::counted_for`]), and the next one is requested at
//!    most `max(interval, peer_timeout) + db_timeout` later and answered within
//!    `peer_timeout`; so `counted_for(vote_lease) > max(interval, peer_timeout) + db_timeout +
//!    peer_timeout`. The refusal of rule 1 says the smallest `vote_lease` that goes with the
//!    `peer_timeout` it asks for ([`lease_for`]).
//!
//! [`judge`] is that rule as a pure function of the configuration and the measurements
//! (table-tested); [`measure`] asks the database for the members (bounded by `db_timeout`)
//! and each voter's daemon `GET /state` [`SAMPLES`] + 1 times on one kept-alive connection
//! (the first opens it and is not counted), all voters at once, everything bounded by
//! [`MEASURE_TIMEOUT`]. A voter whose daemon gives no answer is listed as not measured, not
//! refused: the configuration may be checked before the cluster runs.

use std::time::Duration;

use hyper::Uri;
use tokio::time::Instant;

use crate::config::Config;
use crate::db::Db;
use crate::decide::role;
use crate::peers::{PeerClient, fan_out, peer_url};
use crate::tls::ClientTls;
use crate::units::format_millis;
use crate::wire::VoteScope;

/// Timed requests per voter (after the one that opens the connection).
pub const SAMPLES: usize = 5;
/// Bound on the whole measurement (every voter's requests).
pub const MEASURE_TIMEOUT: Duration = Duration::from_secs(5);

/// Round trips of one vote exchange in the worst healthy case: connect, request, the request
/// again after a ticket refresh; and the TLS handshake when the peers speak https.
pub fn round_trips(tls: bool) -> u32 {
    if tls { 4 } else { 3 }
}

/// One voter and its round trips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distance {
    /// The voter's node name.
    pub node: String,
    /// Its daemon's address, as this node asks it.
    pub url: String,
    /// The round trips measured (at least one), or why there are none.
    pub rtts: Result<Vec<Duration>, String>,
}

impl Distance {
    /// The largest round trip measured.
    pub fn worst(&self) -> Option<Duration> {
        self.rtts
            .as_ref()
            .ok()
            .and_then(|r| r.iter().max().copied())
    }
}

/// A timing that the measured distance breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct Refusal {
    /// The key to change.
    pub key: &'static str,
    pub reason: String,
}

/// The smallest `vote_lease`, in whole 100 ms, whose counted part exceeds the longest healthy
/// renewal gap `max(interval, peer_timeout) + db_timeout + peer_timeout` of `config` with
/// `peer_timeout`.
pub fn lease_for(config: &Config, peer_timeout: Duration) -> Duration {
    let gap = Config::renewal_gap(config.timing.interval, config.db.db_timeout, peer_timeout);
    let mut rules = config.leases;
    let step = Duration::from_millis(100);
    let mut lease = step * ((gap.as_millis() / 100) as u32 + 1);
    loop {
        rules.vote_lease = lease;
        if rules.counted_for(lease) > gap {
            return lease;
        }
        lease += step;
    }
}

/// A measured time in milliseconds with one decimal (`87.3ms`).
fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1e3)
}

/// `d` rounded up to whole 10 ms.
fn ceil_10ms(d: Duration) -> Duration {
    let ms = d.as_micros().div_ceil(10_000) as u64 * 10;
    Duration::from_millis(ms)
}

/// The rule of the module's header: the lines `--check-config` prints (one per voter), or the
/// refusal for the voter farthest away that breaks it.
pub fn judge(config: &Config, voters: &[Distance]) -> Result<Vec<String>, Refusal> {
    let k = round_trips(config.tls.tls_ca_file.is_some());
    let peer_timeout = config.timing.peer_timeout;
    let worst = voters
        .iter()
        .filter_map(|v| v.worst().map(|w| (w, v)))
        .max_by_key(|(w, _)| *w);
    if let Some((rtt, v)) = worst {
        let need = rtt * k;
        if need >= peer_timeout {
            let pt = ceil_10ms(need + Duration::from_millis(1));
            return Err(Refusal {
                key: "peer_timeout",
                reason: format!(
                    "the round trip to voter {} ({}) takes up to {} ({SAMPLES} requests); a \
                     vote may cost {k} round trips (connect, {}request, request again after a \
                     ticket refresh) = {}, which must stay below peer_timeout = {}, or the \
                     vote is lost at the deadline: set peer_timeout to at least {} and, with \
                     it, vote_lease to at least {} (its counted part must exceed \
                     max(interval, peer_timeout) + db_timeout + peer_timeout)",
                    v.node,
                    v.url,
                    ms(rtt),
                    if k > 3 { "TLS handshake, " } else { "" },
                    ms(need),
                    format_millis(peer_timeout),
                    format_millis(pt),
                    format_millis(lease_for(config, pt)),
                ),
            });
        }
    }
    Ok(voters
        .iter()
        .map(|v| match (&v.rtts, v.worst()) {
            (Ok(rtts), Some(w)) => {
                let mut sorted = rtts.clone();
                sorted.sort_unstable();
                format!(
                    "voter {} ({}): round trip {} median, {} at most ({} requests); {k} round \
                     trips {} < peer_timeout {}",
                    v.node,
                    v.url,
                    ms(sorted[sorted.len() / 2]),
                    ms(w),
                    rtts.len(),
                    ms(w * k),
                    format_millis(peer_timeout)
                )
            }
            (Err(why), _) => format!("voter {} ({}): not measured: {why}", v.node, v.url),
            (Ok(_), None) => format!("voter {} ({}): not measured", v.node, v.url),
        })
        .collect())
}

/// Whether `--check-config` measures the distance: in cluster scope, where a candidate's
/// voters are in every site. (In site scope they share its site.)
pub fn applies(config: &Config) -> bool {
    config.leases.scope == VoteScope::Cluster
}

/// Measures the round trip to every voter of this node, its electorate of `vote_scope` (see
/// the module's header); an error when the database cannot say who they are.
pub async fn measure(config: &Config) -> Result<Vec<Distance>, String> {
    let db = Db::open(&config.db).map_err(|e| format!("the database: {e}"))?;
    let obs = db
        .observe()
        .await
        .map_err(|e| format!("the database: {e}"))?;
    let tls = match &config.tls.tls_ca_file {
        Some(ca) => Some(ClientTls::load(ca).map_err(|e| format!("tls_ca_file: {}", e.reason))?),
        None => None,
    };
    let client = PeerClient::with_tls(config.peer.source_address, tls.as_ref());
    let me = config.node.node_name.as_str();
    let role = role(&obs, me, config.leases.scope);
    if role.own.is_none() {
        return Err(format!("{me} is not registered in repmgr.nodes"));
    }
    let targets: Vec<(String, Result<Uri, String>)> = role
        .voters
        .into_iter()
        .map(|row| {
            let url = peer_url(row, &config.peers, config.peer.peer_port, client.scheme());
            (row.node_name.clone(), url)
        })
        .collect();
    let client = &client;
    Ok(fan_out(
        MEASURE_TIMEOUT,
        targets,
        |(node, url), deadline| async move {
            match url {
                Err(why) => Distance {
                    node,
                    url: "-".into(),
                    rtts: Err(format!("no address: {why}")),
                },
                Ok(uri) => Distance {
                    node,
                    url: uri.to_string(),
                    rtts: round_trips_to(client, &uri, deadline).await,
                },
            }
        },
    )
    .await)
}

/// [`SAMPLES`] timed `GET /state` to `uri` after one that opens the connection, one after the
/// other, by `deadline`.
async fn round_trips_to(
    client: &PeerClient,
    uri: &Uri,
    deadline: Instant,
) -> Result<Vec<Duration>, String> {
    client
        .get(uri, "/state", deadline)
        .await
        .map_err(|e| e.to_string())?;
    let mut rtts = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        match client.get(uri, "/state", deadline).await {
            Ok(_) => rtts.push(t.elapsed()),
            Err(e) if rtts.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    Ok(rtts)
}

/// The lines `--check-config` prints for the distance, or the refusal: [`measure`] then
/// [`judge`]. Without a database, or without a voter, only a note (the rule needs both).
pub async fn check(config: &Config) -> Result<Vec<String>, Refusal> {
    match measure(config).await {
        Err(why) => Ok(vec![format!(
            "round trips to the voters not measured: {why}"
        )]),
        Ok(voters) if voters.is_empty() => Ok(vec![
            "round trips to the voters not measured: the metadata lists no other member".into(),
        ]),
        Ok(voters) => judge(config, &voters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(peer_timeout_ms: u64) -> Config {
        let mut c = Config::for_node("node1").unwrap();
        c.timing.peer_timeout = Duration::from_millis(peer_timeout_ms);
        c
    }

    fn at(node: &str, rtts_ms: &[u64]) -> Distance {
        Distance {
            node: node.into(),
            url: format!("http://{node}:5999/"),
            rtts: Ok(rtts_ms.iter().map(|m| Duration::from_millis(*m)).collect()),
        }
    }

    #[test]
    fn the_farthest_voter_over_k_round_trips_decides() {
        let voters = [
            at("node2", &[1, 1, 2]),
            at("node3", &[120, 160, 140]),
            Distance {
                node: "witness".into(),
                url: "http://w:5999/".into(),
                rtts: Err("no answer within 5s".into()),
            },
        ];
        // 3 × 160 ms = 480 ms < 500 ms: accepted, one line per voter.
        let lines = judge(&config(500), &voters).expect("480ms < 500ms");
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("voter node3") && lines[1].contains("160.0ms at most"));
        assert!(lines[2].contains("not measured: no answer"));
        // 3 × 160 ms = 480 ms >= 450 ms: refused, naming the key and the voter.
        let r = judge(&config(450), &voters).expect_err("480ms >= 450ms");
        assert_eq!(r.key, "peer_timeout");
        assert!(r.reason.contains("voter node3"), "{r}");
        assert!(r.reason.contains("at least 490ms"), "{r}");
        // With TLS a fourth round trip: 640 ms.
        let mut tls = config(600);
        tls.tls.tls_ca_file = Some("/etc/ca.pem".into());
        assert!(judge(&tls, &voters).is_err());
        assert!(judge(&config(600), &voters).is_ok());
        // Nothing measured: nothing refused.
        assert!(judge(&config(100), &voters[2..]).is_ok());
    }

    #[test]
    fn the_lease_named_goes_with_the_peer_timeout_asked_for() {
        let c = config(500);
        // Defaults: interval 1s, db_timeout 1s; peer_timeout 500ms → gap 2.5s; the lease's
        // counted part must exceed it: 2.6s counts 2.549s.
        assert_eq!(
            lease_for(&c, Duration::from_millis(500)),
            Duration::from_millis(2600)
        );
        let gap = Config::renewal_gap(
            c.timing.interval,
            c.db.db_timeout,
            Duration::from_millis(900),
        );
        let lease = lease_for(&c, Duration::from_millis(900));
        let mut rules = c.leases;
        rules.vote_lease = lease;
        assert!(rules.counted_for(lease) > gap);
        assert!(rules.counted_for(lease - Duration::from_millis(100)) <= gap);
        let r = judge(&config(400), &[at("node3", &[150])]).unwrap_err();
        assert!(
            r.reason.contains(&format!(
                "vote_lease to at least {}",
                format_millis(lease_for(&c, Duration::from_millis(460)))
            )),
            "{r}"
        );
    }
}

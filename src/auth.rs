//! Peer authentication: the cluster's keys, the MAC over a request and over its answer, the
//! freshness rule that refuses a replayed request, the rule that binds a release to the grants
//! it undoes, and the cluster identity; pure.
//!
//! Nothing here reads a clock or a socket: time comes in as `now` (a monotonic [`Instant`] of
//! this node's clock) and bytes come in as the caller received them, so the daemon and the
//! simulation (`tests/sim.rs`) call the same functions. The only system call is the OS's random
//! source, for keys ([`generate_key_line`]), nonces ([`Nonce::random`]), boot ids
//! ([`BootId::random`]) and the ticket secret ([`ReplayGuard::new`]); each has a constructor
//! from bytes for deterministic tests. Reading the key file ([`Keys::load`]) is the one other
//! I/O, at start and at reload.
//!
//! ## Keys
//! `peer_key_file` holds one key per line; the **first signs, every one verifies**, so keys
//! rotate without downtime: add the new key second on every node, then move it first on every
//! node, then drop the old one. A key line is `hmac-sha256:` followed by the base64 (RFC 4648
//! standard alphabet, padding optional) of 32 to 64 random bytes (256 to 512 bits); blank lines
//! and lines starting with `#` are ignored. `primgr keygen` prints one ([`generate_key_line`]);
//! `echo "hmac-sha256:$(openssl rand -base64 32)"` makes the same. The file must be a regular
//! file (not a symbolic link, checked with `symlink_metadata` and opened with `O_NOFOLLOW`)
//! that neither group nor others may read or write (`chmod 600`), as libpq insists for a
//! passfile. An error names the path, the line and the reason, never a key's text.
//! A key is known on the wire by its id: the first 8 bytes of `HMAC(key, "primgr key id v1")`
//! (one-way: it tells nothing of the key). `Debug` and `Display` show ids only.
//!
//! ## What is signed (HMAC-SHA256, RustCrypto `hmac` + `sha2`; tags compared in constant time)
//! - A **request** binds: sender, recipient, the sender's cluster identity, a fresh random
//!   nonce (128 bits), the recipient's ticket (below), and the request itself byte for byte:
//!   method, target (path and query as sent) and body. So the endpoint (`/vote` or
//!   `/release`), the candidate of a vote and the grants a release undoes are bound by whatever
//!   field the wire format gives them.
//! - An **answer** binds: responder, requester, the responder's cluster identity, the
//!   request's nonce, method and target, a ticket for the requester's next request, the HTTP
//!   status and the whole body as sent. A forged answer fails the MAC; a replayed one fails
//!   because its nonce is not the one this request sent.
//! - Every field goes into the MAC as its length (8 bytes, big endian) and its bytes, after a
//!   label that differs for requests and answers, so no two messages share an input.
//!
//! On the wire (header [`HEADER`], `X-Primgr-Auth`), one line of space-separated fields:
//! request `v1 key=K from=F to=T cluster=C nonce=N ticket=W mac=M`, answer
//! `v1 key=K from=F to=T cluster=C ticket=W mac=M`; names percent-encoded, the cluster in
//! decimal or `-` when unknown, nonce/ticket/mac/key in unpadded base64url, a missing ticket
//! `-`. The caller signs the exact bytes it sends and verifies the exact bytes it received:
//! [`Keys::sign_request`] / [`Keys::verify_request`], [`Keys::sign_answer`] /
//! [`Keys::verify_answer`], each with the [`Exchange`] (method, target, body) as sent.
//!
//! ## Replays: the rule, and why
//! What a replayed or delayed request could do, without this rule:
//! - `/vote?candidate=C` replayed to voter V: if V's metadata names C, V renews its promise to
//!   C from the moment of the replay. C counts the vote from when *it* sent the request, so V
//!   promises longer than C counts: never two 200s (it only makes V refuse others longer), but
//!   an availability attack. Replayed from a recording of C's requests after C died, it keeps
//!   V's promise to C alive until V's metadata moves away from C, and the new primary then waits
//!   a whole `vote_lease` more. If V's metadata names another node, the request changes nothing.
//! - `/release` replayed to holder H: H voids votes. A release that voids *every* vote
//!   requested before it (of every voter), replayed while H has no window (after a restart of
//!   its daemon, between two windows), costs H its 200 for a cycle, and again at every replay.
//!
//! The cross-machine send time cannot bound a request's age (monotonic clocks of two machines
//! share no origin; wall clocks step). So the *recipient's own clock* does, through
//! **tickets**: every signed answer carries a ticket for the requester, made by the answering
//! daemon: when it was issued (its monotonic clock) and a tag under a secret that never leaves
//! its process ([`ReplayGuard`]). A state-changing request (`/vote` with a candidate,
//! `/release`) must carry a ticket of the recipient's current process, at most `lifetime` old
//! on the recipient's clock, and a nonce the recipient has not accepted under a ticket still in
//! its lifetime. The recipient remembers each accepted nonce until its ticket's lifetime ends,
//! so:
//! - a replay within the lifetime is refused (nonce seen), a replay after it is refused (ticket
//!   stale), and a replay after the recipient restarted is refused (a ticket of another
//!   process: the secret is new). A replayed request changes nothing;
//! - a request withheld and delivered late counts only within the lifetime, so a delayed vote
//!   request extends a promise by at most `lifetime` beyond what the candidate counts (with
//!   `lifetime = vote_lease`, as suggested, at most one lease);
//! - a request without a usable ticket gets 401 with a fresh ticket in its signed answer and
//!   the sender retries at once ([`worth_retrying`]): one more round trip after either side
//!   started, none in steady state (each answer brings the next ticket; a standby's `/wal`
//!   answers from the primary bring it the ticket its `/release` needs at a failover);
//! - memory is bounded: nothing is remembered before the MAC verifies (a flood without the key
//!   costs nothing), at most [`MAX_NONCES_PER_SENDER`] nonces per sender and [`MAX_SENDERS`]
//!   senders; past that the request is refused (which changes nothing). A ticket lifetime must
//!   leave room for a sender's honest requests: about (vote + release + retries) per cycle,
//!   so `lifetime / interval` well below `MAX_NONCES_PER_SENDER / 4`.
//!
//! Read-only requests (`/wal`, `/state`, `/status`) change nothing and need no ticket: the
//! requester's nonce in the header is enough for the answer to be bound to this request.
//!
//! ## A release undoes only the grants its sender made before it asked ([`GrantEpoch`])
//! A voter's grants carry its **epoch**: a random boot id (new at every start of its daemon)
//! and a counter that the voter advances every time it begins asking for a release. A release
//! names the epoch it undoes; the holder then voids exactly that voter's votes of that boot
//! with an epoch at or below it ([`Fences`]), nothing of other voters, nothing newer. So:
//! - a release voids nothing its sender did not grant, and no grant made after the sender
//!   asked (from the moment it asks, a voter gives the holder no vote until the next cycle, and
//!   its later grants carry the next epoch);
//! - a release replayed or delivered late, whatever the freshness rule says, voids only grants
//!   its sender had asked to void, and a second application changes nothing;
//! - a fence is forgotten a `vote_lease` after it was set (every vote it voids was requested
//!   before it and has expired by then), so memory is bounded by the releases of one lease;
//! - votes of another boot of the same voter are untouched: a voter abstains a `vote_lease`
//!   after it starts, so by the time its new process can ask for a release, every vote of its
//!   earlier process has expired at the holder.
//!
//! ## Cluster identity ([`cluster_identity`])
//! A vote of another cluster's node never counts, with or without a key. The identity is
//! PostgreSQL's **system identifier** of the streaming-replication cluster
//! (`SELECT system_identifier FROM pg_control_system()`, executable by PUBLIC in PostgreSQL
//! 15): a primary and every standby cloned from it share it, another `initdb` has another.
//! A repmgr witness runs its own instance (another identifier) and repmgr 5.3 records no system
//! identifier in `repmgr.nodes` (the witness copies that table from the primary). So:
//! - a **data node** (primary, standby) uses the identifier of its own database; a configured
//!   `cluster_id` there must equal it (a mismatch is an error: the configuration and the
//!   database belong to two clusters, and the node neither votes nor counts votes);
//! - a **witness** uses the configured `cluster_id`, or without one, the identity that the
//!   daemon of the node *its own metadata* names as primary reports in its answer (signed
//!   when a key is in force; the same node repmgr itself trusts). Learning it from the requester instead would be wrong: a
//!   foreign witness asked by a stray `[peers]` entry would adopt the asker's identity and, with
//!   tutorial names (`node1`..), vote for it. Until it has an identity a witness grants no vote
//!   (its vote is withheld: safe); with `cluster_id` configured, a primary reporting another
//!   identity is an error, not an update.
//!
//! Every request and answer carries the identity, bound by the MAC; a recipient refuses a
//! request of another cluster, and a candidate counts no answer of another cluster. Without a
//! key the identity travels in the typed body and is compared the same way (it then guards
//! against a mistake, not an attacker).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The HTTP header that carries a request's or an answer's authentication.
pub const HEADER: &str = "x-primgr-auth";

/// The prefix of a key line: the MAC algorithm the key is for.
pub const KEY_PREFIX: &str = "hmac-sha256:";

/// The shortest key (bytes): 256 bits.
pub const MIN_KEY_BYTES: usize = 32;

/// The longest key (bytes): HMAC-SHA256's block; a longer key would be hashed first.
pub const MAX_KEY_BYTES: usize = 64;

/// The largest key file read: far above any rotation's few lines.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The longest header value accepted (node names are at most 63 bytes in repmgr).
pub const MAX_HEADER_BYTES: usize = 2048;

/// The most senders whose nonces a [`ReplayGuard`] remembers at once.
pub const MAX_SENDERS: usize = 64;

/// The most nonces a [`ReplayGuard`] remembers for one sender.
pub const MAX_NONCES_PER_SENDER: usize = 1024;

/// The most peers whose ticket a [`TicketBook`] keeps.
pub const MAX_TICKET_PEERS: usize = 256;

/// The most voters a holder's [`Fences`] remembers releases of.
pub const MAX_FENCED_VOTERS: usize = 64;

/// The most live fences of one voter: one per boot of it whose release is less than a
/// `vote_lease` old (two at most in practice: its current process and the one before).
pub const MAX_FENCES_PER_VOTER: usize = 64;

/// Key lines: the standard alphabet, with or without padding (`openssl rand -base64` pads).
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a node name may contain unencoded in the header: letters, digits, `-._~`.
const NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const LABEL_KEY_ID: &[u8] = b"primgr key id v1";
const LABEL_REQUEST: &[u8] = b"primgr request v1";
const LABEL_ANSWER: &[u8] = b"primgr answer v1";
const LABEL_TICKET: &[u8] = b"primgr ticket v1";

/// The OS's random source failed (the error is the OS's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the OS's random source failed: {0}")]
pub struct RandomError(String);

fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(bytes)
}

/// An HMAC keyed with `key` (HMAC takes a key of any length: the error never happens).
fn keyed(key: &[u8]) -> Option<HmacSha256> {
    <HmacSha256 as KeyInit>::new_from_slice(key).ok()
}

/// Feeds one field: its length, then its bytes (no two field lists share an input).
fn field(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

// ---------------------------------------------------------------------------------------------
// Keys

/// A key's public name: 8 bytes of `HMAC(key, "primgr key id v1")`, base64url on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    fn parse(text: &str) -> Option<KeyId> {
        decode_fixed(text).map(KeyId)
    }
}

/// One key: its id and the HMAC state keyed with it (the key's bytes are not kept).
#[derive(Clone)]
struct Key {
    id: KeyId,
    mac: HmacSha256,
}

impl Key {
    fn new(secret: &[u8]) -> Option<Key> {
        let mac = keyed(secret)?;
        let tag = mac
            .clone()
            .chain_update(LABEL_KEY_ID)
            .finalize()
            .into_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(tag.get(..8)?);
        Some(Key { id: KeyId(id), mac })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

/// The keys of `peer_key_file`: the first signs, every one verifies.
#[derive(Clone)]
pub struct Keys {
    signer: Key,
    /// The keys that only verify, in the file's order.
    others: Vec<Key>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("signs", &self.signing())
            .field("verify", &self.ids())
            .finish()
    }
}

impl fmt::Display for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key(s), signing with {}",
            1 + self.others.len(),
            self.signing()
        )
    }
}

/// Why a key file is refused (the key's text is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileReason {
    #[error("cannot read it: {0}")]
    Unreadable(String),
    #[error("not a regular file but {0}")]
    NotRegular(&'static str),
    #[error(
        "group or others may access it (mode {mode:04o}): it must be readable by its owner \
         only (chmod 600)"
    )]
    Permissions { mode: u32 },
    #[error("larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotText,
    #[error("no key in it (a key line is `{KEY_PREFIX}` and base64; `primgr keygen` prints one)")]
    NoKey,
    #[error(
        "line {line}: not a key line (a key line is `{KEY_PREFIX}` followed by the base64 of \
         {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes; comments start with #)"
    )]
    NotAKey { line: usize },
    #[error(
        "line {line}: a key of {bytes} bytes; a key has {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes \
         (256 to 512 bits): make one with `primgr keygen`"
    )]
    Length { line: usize, bytes: usize },
    #[error("line {line}: the same key as line {first}")]
    Duplicate { line: usize, first: usize },
}

/// A key file refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer_key_file {}: {reason}", path.display())]
pub struct KeyFileError {
    pub path: PathBuf,
    pub reason: KeyFileReason,
}

impl Keys {
    /// Reads and parses the key file at `path`: a regular file (a symbolic link is refused,
    /// also if one is swapped in between the check and the open) that neither group nor others
    /// may read or write, at most [`MAX_KEY_FILE_BYTES`].
    pub fn load(path: &Path) -> Result<Keys, KeyFileError> {
        let fail = |reason| KeyFileError {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| fail(KeyFileReason::Unreadable(e.to_string())))?;
        check_file(&meta).map_err(fail)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| fail(KeyFileReason::Unreadable(e.to_string())))?;
        // The file opened is the one checked (not one swapped in since).
        let meta = file
            .metadata()
            .map_err(|e| fail(KeyFileReason::Unreadable(e.to_string())))?;
        check_file(&meta).map_err(fail)?;
        let mut bytes = Vec::new();
        file.by_ref()
            .take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(KeyFileReason::Unreadable(e.to_string())))?;
        if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(fail(KeyFileReason::TooLarge));
        }
        let text = String::from_utf8(bytes).map_err(|_| fail(KeyFileReason::NotText))?;
        Keys::parse(&text).map_err(fail)
    }

    /// Parses the text of a key file (see the module's header for the format).
    pub fn parse(text: &str) -> Result<Keys, KeyFileReason> {
        let mut keys: Vec<(usize, Key)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let encoded = trimmed
                .strip_prefix(KEY_PREFIX)
                .ok_or(KeyFileReason::NotAKey { line })?;
            let secret = KEY_BASE64
                .decode(encoded)
                .map_err(|_| KeyFileReason::NotAKey { line })?;
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&secret.len()) {
                return Err(KeyFileReason::Length {
                    line,
                    bytes: secret.len(),
                });
            }
            let key = Key::new(&secret).ok_or(KeyFileReason::NotAKey { line })?;
            if let Some((first, _)) = keys.iter().find(|(_, k)| k.id == key.id) {
                return Err(KeyFileReason::Duplicate {
                    line,
                    first: *first,
                });
            }
            keys.push((line, key));
        }
        let mut keys = keys.into_iter().map(|(_, k)| k);
        let signer = keys.next().ok_or(KeyFileReason::NoKey)?;
        Ok(Keys {
            signer,
            others: keys.collect(),
        })
    }

    /// The keys of these secrets, the first signing (for tests and the simulation); None
    /// without a secret.
    pub fn from_secrets(secrets: &[&[u8]]) -> Option<Keys> {
        let mut keys = secrets.iter().map(|s| Key::new(s));
        Some(Keys {
            signer: keys.next()??,
            others: keys.collect::<Option<Vec<Key>>>()?,
        })
    }

    /// The id of the key that signs.
    pub fn signing(&self) -> KeyId {
        self.signer.id
    }

    /// The ids of every key that verifies, the signing key first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.all().map(|k| k.id).collect()
    }

    fn all(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.signer).chain(&self.others)
    }

    fn find(&self, id: KeyId) -> Option<&Key> {
        self.all().find(|k| k.id == id)
    }

    /// The `X-Primgr-Auth` value of a request with these claims, as `request` is sent.
    pub fn sign_request(&self, claims: &RequestClaims, request: &Exchange<'_>) -> String {
        let id = self.signer.id;
        let mut mac = self.signer.mac.clone();
        feed_request(&mut mac, claims, request);
        let mac: [u8; 32] = mac.finalize().into_bytes().into();
        format!(
            "v1 key={id} from={} to={} cluster={} nonce={} ticket={} mac={}",
            encode_name(&claims.from),
            encode_name(&claims.to),
            ClusterId::token(claims.cluster),
            claims.nonce,
            Ticket::token(claims.ticket.as_ref()),
            URL_SAFE_NO_PAD.encode(mac),
        )
    }

    /// Checks a request's `X-Primgr-Auth` value against the request as received: its claims
    /// when a key of this node signed exactly this request. The caller then checks that it is
    /// addressed to this node and cluster ([`RequestClaims::addressed`]) and, for a request
    /// that changes state, that it is fresh ([`ReplayGuard::admit`]).
    pub fn verify_request(
        &self,
        header: &str,
        request: &Exchange<'_>,
    ) -> Result<RequestClaims, AuthError> {
        let (id, claims, tag) = RequestClaims::parse_signed(header)?;
        let key = self.find(id).ok_or(AuthError::UnknownKey(id))?;
        let mut mac = key.mac.clone();
        feed_request(&mut mac, &claims, request);
        mac.verify_slice(&tag).map_err(|_| AuthError::BadMac)?;
        Ok(claims)
    }

    /// The `X-Primgr-Auth` value of an answer with these claims to the request `request`
    /// (as it was received) whose nonce was `nonce`, with exactly this status and body.
    pub fn sign_answer(
        &self,
        claims: &AnswerClaims,
        nonce: &Nonce,
        request: &Exchange<'_>,
        status: u16,
        body: &[u8],
    ) -> String {
        let id = self.signer.id;
        let mut mac = self.signer.mac.clone();
        feed_answer(&mut mac, claims, nonce, request, status, body);
        let mac: [u8; 32] = mac.finalize().into_bytes().into();
        format!(
            "v1 key={id} from={} to={} cluster={} ticket={} mac={}",
            encode_name(&claims.from),
            encode_name(&claims.to),
            ClusterId::token(claims.cluster),
            Ticket::token(claims.ticket.as_ref()),
            URL_SAFE_NO_PAD.encode(mac),
        )
    }

    /// Checks an answer's `X-Primgr-Auth` value against the request this node sent (its
    /// `nonce`, method and target) and the status and body as received: its claims when a key
    /// of this node signed exactly this answer to exactly this request. The caller then checks
    /// who answered and for which cluster ([`AnswerClaims::check`]).
    pub fn verify_answer(
        &self,
        header: &str,
        nonce: &Nonce,
        request: &Exchange<'_>,
        status: u16,
        body: &[u8],
    ) -> Result<AnswerClaims, AuthError> {
        let (id, claims, tag) = AnswerClaims::parse_signed(header)?;
        let key = self.find(id).ok_or(AuthError::UnknownKey(id))?;
        let mut mac = key.mac.clone();
        feed_answer(&mut mac, &claims, nonce, request, status, body);
        mac.verify_slice(&tag).map_err(|_| AuthError::BadMac)?;
        Ok(claims)
    }
}

fn check_file(meta: &std::fs::Metadata) -> Result<(), KeyFileReason> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(KeyFileReason::NotRegular("a symbolic link"));
    }
    if kind.is_dir() {
        return Err(KeyFileReason::NotRegular("a directory"));
    }
    if !kind.is_file() {
        return Err(KeyFileReason::NotRegular("a special file"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileReason::Permissions { mode });
    }
    Ok(())
}

/// A fresh key line for `peer_key_file` (`primgr keygen`): 32 bytes from the OS's random
/// source, as `hmac-sha256:<base64>`.
pub fn generate_key_line() -> Result<String, RandomError> {
    let secret: [u8; MIN_KEY_BYTES] = random()?;
    Ok(format!("{KEY_PREFIX}{}", KEY_BASE64.encode(secret)))
}

// ---------------------------------------------------------------------------------------------
// Nonces, the request as sent, claims

/// A request's nonce: 128 random bits, never reused by a sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nonce([u8; 16]);

impl Nonce {
    /// A nonce from the OS's random source.
    pub fn random() -> Result<Nonce, RandomError> {
        random().map(Nonce)
    }

    /// A nonce of these bytes (for tests and the simulation).
    pub fn from_bytes(bytes: [u8; 16]) -> Nonce {
        Nonce(bytes)
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({self})")
    }
}

/// A request as it crosses the wire, byte for byte: what both MACs bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The request target in origin form, as sent: path and query (`/vote?candidate=node1`).
    pub target: &'a str,
    /// The request's body (empty for a body-less request).
    pub body: &'a [u8],
}

/// What an authenticated request claims (all of it bound by its MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestClaims {
    /// The sending node.
    pub from: String,
    /// The node it is for.
    pub to: String,
    /// The sender's cluster identity (None: it has none yet, e.g. a witness before it learned).
    pub cluster: Option<ClusterId>,
    /// Fresh for every request.
    pub nonce: Nonce,
    /// The recipient's latest ticket for the sender, if it has one.
    pub ticket: Option<Ticket>,
}

impl RequestClaims {
    /// The claims of a request's `X-Primgr-Auth` value, unverified: enough to bind the answer
    /// of a read-only request to its nonce. [`Keys::verify_request`] parses and verifies.
    pub fn parse(header: &str) -> Result<RequestClaims, AuthError> {
        Self::parse_signed(header).map(|(_, claims, _)| claims)
    }

    fn parse_signed(header: &str) -> Result<(KeyId, RequestClaims, Vec<u8>), AuthError> {
        let f = fields(
            header,
            &["key", "from", "to", "cluster", "nonce", "ticket", "mac"],
        )?;
        let claims = RequestClaims {
            from: decode_name(f[1])?,
            to: decode_name(f[2])?,
            cluster: ClusterId::from_token(f[3])?,
            nonce: decode_fixed(f[4])
                .map(Nonce)
                .ok_or_else(|| malformed("nonce"))?,
            ticket: Ticket::from_token(f[5])?,
        };
        Ok((key_id(f[0])?, claims, mac_tag(f[6])?))
    }

    /// Whether the request is for this node (`me`) of this cluster (`mine`): a request of
    /// another cluster, or of a node without an identity, is refused.
    pub fn addressed(&self, me: &str, mine: Option<ClusterId>) -> Result<(), AuthError> {
        if self.to != me {
            return Err(AuthError::WrongRecipient {
                to: self.to.clone(),
                me: me.to_string(),
            });
        }
        same_cluster(self.cluster, mine)
    }
}

/// What an authenticated answer claims (all of it bound by its MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerClaims {
    /// The answering node.
    pub from: String,
    /// The node that asked.
    pub to: String,
    /// The responder's cluster identity.
    pub cluster: Option<ClusterId>,
    /// A ticket for the asker's next state-changing request to the responder.
    pub ticket: Option<Ticket>,
}

impl AnswerClaims {
    fn parse_signed(header: &str) -> Result<(KeyId, AnswerClaims, Vec<u8>), AuthError> {
        let f = fields(header, &["key", "from", "to", "cluster", "ticket", "mac"])?;
        let claims = AnswerClaims {
            from: decode_name(f[1])?,
            to: decode_name(f[2])?,
            cluster: ClusterId::from_token(f[3])?,
            ticket: Ticket::from_token(f[4])?,
        };
        Ok((key_id(f[0])?, claims, mac_tag(f[5])?))
    }

    /// Whether the answer comes from `peer`, the node asked, to `me`; the cluster aside (a
    /// witness learning its identity reads [`AnswerClaims::cluster`]).
    pub fn check_peer(&self, peer: &str, me: &str) -> Result<(), AuthError> {
        if self.from != peer {
            return Err(AuthError::WrongResponder {
                from: self.from.clone(),
                asked: peer.to_string(),
            });
        }
        if self.to != me {
            return Err(AuthError::WrongRecipient {
                to: self.to.clone(),
                me: me.to_string(),
            });
        }
        Ok(())
    }

    /// Whether the answer comes from `peer` to `me`, in this node's cluster `mine`: only such an
    /// answer counts (a vote, a release, a position, a state).
    pub fn check(&self, peer: &str, me: &str, mine: Option<ClusterId>) -> Result<(), AuthError> {
        self.check_peer(peer, me)?;
        same_cluster(self.cluster, mine)
    }
}

/// Whether a requester should send its request again at once: its request was refused (401)
/// by an authenticated answer that brought a ticket other than the one it sent (it had none,
/// or one of the responder's previous process, or one too old). Once per request.
pub fn worth_retrying(status: u16, sent: Option<&Ticket>, answer: &AnswerClaims) -> bool {
    status == 401 && answer.ticket.is_some() && answer.ticket.as_ref() != sent
}

fn same_cluster(theirs: Option<ClusterId>, mine: Option<ClusterId>) -> Result<(), AuthError> {
    match (theirs, mine) {
        (Some(t), Some(m)) if t == m => Ok(()),
        _ => Err(AuthError::WrongCluster { theirs, mine }),
    }
}

fn feed_request(mac: &mut HmacSha256, claims: &RequestClaims, request: &Exchange<'_>) {
    field(mac, LABEL_REQUEST);
    field(mac, claims.from.as_bytes());
    field(mac, claims.to.as_bytes());
    field(mac, ClusterId::token(claims.cluster).as_bytes());
    field(mac, &claims.nonce.0);
    field(mac, claims.ticket.as_ref().map_or(&[][..], |t| &t.0[..]));
    field(mac, request.method.as_bytes());
    field(mac, request.target.as_bytes());
    field(mac, request.body);
}

fn feed_answer(
    mac: &mut HmacSha256,
    claims: &AnswerClaims,
    nonce: &Nonce,
    request: &Exchange<'_>,
    status: u16,
    body: &[u8],
) {
    field(mac, LABEL_ANSWER);
    field(mac, claims.from.as_bytes());
    field(mac, claims.to.as_bytes());
    field(mac, ClusterId::token(claims.cluster).as_bytes());
    field(mac, &nonce.0);
    field(mac, claims.ticket.as_ref().map_or(&[][..], |t| &t.0[..]));
    field(mac, request.method.as_bytes());
    field(mac, request.target.as_bytes());
    field(mac, &status.to_be_bytes());
    field(mac, body);
}

/// Why a request or an answer is not authentic, or not for this node, or not fresh. Its
/// `Display` is the reason a 401 gives and the log says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no {HEADER} header: peer requests need the cluster's key (peer_key_file)")]
    Missing,
    #[error("malformed {HEADER} header: {0}")]
    Malformed(String),
    #[error("signed with key {0}, which is not in this node's peer_key_file")]
    UnknownKey(KeyId),
    #[error("the MAC does not match: the message was altered, or signed by another key")]
    BadMac,
    #[error("addressed to {to:?}, but this is {me:?}")]
    WrongRecipient { to: String, me: String },
    #[error("answered by {from:?}, but {asked:?} was asked")]
    WrongResponder { from: String, asked: String },
    #[error(
        "cluster {} is not this node's cluster {}",
        ClusterId::shown(*theirs),
        ClusterId::shown(*mine)
    )]
    WrongCluster {
        theirs: Option<ClusterId>,
        mine: Option<ClusterId>,
    },
    #[error("no ticket: ask again with the ticket of this answer")]
    NoTicket,
    #[error("a ticket of another process of this node (it restarted): ask again with this one")]
    ForeignTicket,
    #[error(
        "a ticket {} old, past its lifetime: ask again with this one",
        humantime::format_duration(*age)
    )]
    StaleTicket { age: Duration },
    #[error("a replay: this nonce was accepted before")]
    Replayed,
    #[error("too many requests of {0} within a ticket's lifetime: refused")]
    Busy(String),
}

impl AuthError {
    /// Whether the answer should carry a fresh ticket for the sender to ask again with.
    pub fn wants_ticket(&self) -> bool {
        matches!(
            self,
            AuthError::NoTicket | AuthError::ForeignTicket | AuthError::StaleTicket { .. }
        )
    }
}

fn malformed(what: &str) -> AuthError {
    AuthError::Malformed(format!("bad {what}"))
}

/// The values of `v1 name=value ...`, exactly these names in this order.
fn fields<'h>(header: &'h str, names: &[&str]) -> Result<Vec<&'h str>, AuthError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(AuthError::Malformed(format!(
            "longer than {MAX_HEADER_BYTES} bytes"
        )));
    }
    let mut parts = header.split(' ');
    if parts.next() != Some("v1") {
        return Err(AuthError::Malformed("not a v1 header".into()));
    }
    let mut values = Vec::with_capacity(names.len());
    for name in names {
        let part = parts
            .next()
            .ok_or_else(|| AuthError::Malformed(format!("no {name}")))?;
        let value = part
            .strip_prefix(name)
            .and_then(|p| p.strip_prefix('='))
            .ok_or_else(|| AuthError::Malformed(format!("expected {name}=")))?;
        values.push(value);
    }
    if parts.next().is_some() {
        return Err(AuthError::Malformed("more fields than v1 has".into()));
    }
    Ok(values)
}

fn key_id(text: &str) -> Result<KeyId, AuthError> {
    KeyId::parse(text).ok_or_else(|| malformed("key id"))
}

fn mac_tag(text: &str) -> Result<Vec<u8>, AuthError> {
    match URL_SAFE_NO_PAD.decode(text) {
        Ok(tag) if tag.len() == 32 => Ok(tag),
        _ => Err(malformed("mac")),
    }
}

fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Unpadded base64url of N bytes is at most 4·N/3 + 2 characters; refuse longer text first.
    if text.len() > N * 4 / 3 + 2 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn encode_name(name: &str) -> String {
    utf8_percent_encode(name, NAME).to_string()
}

fn decode_name(text: &str) -> Result<String, AuthError> {
    if text.is_empty() {
        return Err(malformed("node name (empty)"));
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|n| n.into_owned())
        .map_err(|_| malformed("node name (not UTF-8)"))
}

// ---------------------------------------------------------------------------------------------
// Freshness: tickets, the recipient's replay guard, the sender's ticket book

/// A recipient's ticket for one sender: when it was issued (the recipient's clock, in
/// microseconds since its guard was made) and a tag under the recipient process's secret.
/// Opaque to the sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket([u8; 24]);

impl Ticket {
    fn token(ticket: Option<&Ticket>) -> String {
        ticket.map_or_else(|| "-".into(), |t| URL_SAFE_NO_PAD.encode(t.0))
    }

    fn from_token(text: &str) -> Result<Option<Ticket>, AuthError> {
        match text {
            "-" => Ok(None),
            t => decode_fixed(t)
                .map(|b| Some(Ticket(b)))
                .ok_or_else(|| malformed("ticket")),
        }
    }

    fn issued_us(&self) -> u64 {
        let mut at = [0u8; 8];
        at.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(at)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({})", Ticket::token(Some(self)))
    }
}

/// The recipient's side of the freshness rule: issues tickets, and admits a state-changing
/// request only once, under a ticket of this process at most `lifetime` old.
pub struct ReplayGuard {
    secret: HmacSha256,
    base: Instant,
    /// A ticket is usable this long after it was issued.
    lifetime: Duration,
    /// Nonces are kept this long after their ticket was issued: the longest lifetime ever in
    /// force, so a nonce is never forgotten while its ticket is still usable.
    retention: Duration,
    /// For each sender, the nonces accepted and when their ticket was issued.
    seen: HashMap<String, Accepted>,
}

/// The nonces accepted from one sender, with when their ticket was issued.
#[derive(Default)]
struct Accepted {
    nonces: HashMap<Nonce, Instant>,
    /// The earliest issue among `nonces` (None when empty): a purge frees nothing before it
    /// is `retention` old, so a sender at its bound is refused without a scan.
    oldest: Option<Instant>,
}

impl Accepted {
    /// Forgets the nonces whose ticket was issued `retention` or more before `now`.
    fn purge(&mut self, now: Instant, retention: Duration) {
        if self
            .oldest
            .is_some_and(|o| now.saturating_duration_since(o) >= retention)
        {
            self.nonces
                .retain(|_, at| now.saturating_duration_since(*at) < retention);
            self.oldest = self.nonces.values().min().copied();
        }
    }
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("lifetime", &self.lifetime)
            .field("senders", &self.seen.len())
            .field("nonces", &self.remembered())
            .finish_non_exhaustive()
    }
}

impl ReplayGuard {
    /// The guard of a daemon started at `started`, with a secret from the OS's random source.
    pub fn new(started: Instant, lifetime: Duration) -> Result<ReplayGuard, RandomError> {
        Ok(ReplayGuard::with_secret(random()?, started, lifetime))
    }

    /// A guard with this secret (for tests and the simulation; a daemon uses [`Self::new`]).
    pub fn with_secret(secret: [u8; 64], started: Instant, lifetime: Duration) -> ReplayGuard {
        ReplayGuard {
            secret: HmacSha256::new(&secret.into()),
            base: started,
            lifetime,
            retention: lifetime,
            seen: HashMap::new(),
        }
    }

    /// Sets the lifetime of tickets (a reload). Nonces are kept for the longest lifetime ever
    /// set, so a shorter one never lets a replay through.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
        self.retention = self.retention.max(lifetime);
    }

    /// A ticket for `sender`'s next request, issued at `now`.
    pub fn ticket(&self, sender: &str, now: Instant) -> Ticket {
        let issued = now.saturating_duration_since(self.base).as_micros() as u64;
        let tag = self.tag(sender, issued);
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&issued.to_be_bytes());
        bytes[8..].copy_from_slice(&tag[..16]);
        Ticket(bytes)
    }

    fn tag(&self, sender: &str, issued: u64) -> [u8; 32] {
        let mut mac = self.secret.clone();
        field(&mut mac, LABEL_TICKET);
        field(&mut mac, sender.as_bytes());
        field(&mut mac, &issued.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Admits a verified, state-changing request at `now`: its ticket must be this process's,
    /// issued for its sender at most `lifetime` ago, and its nonce new. Remembers the nonce; a
    /// refusal changes nothing.
    pub fn admit(&mut self, request: &RequestClaims, now: Instant) -> Result<(), AuthError> {
        let ticket = request.ticket.as_ref().ok_or(AuthError::NoTicket)?;
        let issued_us = ticket.issued_us();
        let mut mac = self.secret.clone();
        field(&mut mac, LABEL_TICKET);
        field(&mut mac, request.from.as_bytes());
        field(&mut mac, &issued_us.to_be_bytes());
        mac.verify_truncated_left(&ticket.0[8..])
            .map_err(|_| AuthError::ForeignTicket)?;
        let issued = self
            .base
            .checked_add(Duration::from_micros(issued_us))
            .filter(|at| *at <= now)
            .ok_or(AuthError::ForeignTicket)?;
        let age = now - issued;
        if age >= self.lifetime {
            return Err(AuthError::StaleTicket { age });
        }
        let retention = self.retention;
        if !self.seen.contains_key(&request.from) && self.seen.len() >= MAX_SENDERS {
            self.seen.retain(|_, accepted| {
                accepted.purge(now, retention);
                !accepted.nonces.is_empty()
            });
            if self.seen.len() >= MAX_SENDERS {
                return Err(AuthError::Busy(request.from.clone()));
            }
        }
        let accepted = self.seen.entry(request.from.clone()).or_default();
        if accepted.nonces.contains_key(&request.nonce) {
            return Err(AuthError::Replayed);
        }
        if accepted.nonces.len() >= MAX_NONCES_PER_SENDER {
            accepted.purge(now, retention);
            if accepted.nonces.len() >= MAX_NONCES_PER_SENDER {
                return Err(AuthError::Busy(request.from.clone()));
            }
        }
        accepted.oldest = Some(accepted.oldest.map_or(issued, |o| o.min(issued)));
        accepted.nonces.insert(request.nonce, issued);
        Ok(())
    }

    /// How many nonces it remembers (for `/status` and the tests of its bound).
    pub fn remembered(&self) -> usize {
        self.seen.values().map(|a| a.nonces.len()).sum()
    }
}

/// The requester's side: the latest ticket each peer gave this node (from verified answers
/// only), to send with the next state-changing request to it.
#[derive(Debug, Default, Clone)]
pub struct TicketBook {
    tickets: HashMap<String, Ticket>,
}

impl TicketBook {
    /// The ticket to send to `peer`, if any.
    pub fn get(&self, peer: &str) -> Option<Ticket> {
        self.tickets.get(peer).copied()
    }

    /// Keeps the ticket of a verified answer of `peer` (at most [`MAX_TICKET_PEERS`] peers).
    pub fn learn(&mut self, peer: &str, answer: &AnswerClaims) {
        let Some(ticket) = answer.ticket else { return };
        if let Some(t) = self.tickets.get_mut(peer) {
            *t = ticket;
        } else if self.tickets.len() < MAX_TICKET_PEERS {
            self.tickets.insert(peer.to_string(), ticket);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Releases bound to grants

/// A random id of one process of a daemon (new at every start).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BootId([u8; 16]);

impl BootId {
    /// A boot id from the OS's random source.
    pub fn random() -> Result<BootId, RandomError> {
        random().map(BootId)
    }

    /// A boot id of these bytes (for tests and the simulation).
    pub fn from_bytes(bytes: [u8; 16]) -> BootId {
        BootId(bytes)
    }
}

impl fmt::Debug for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootId({})", URL_SAFE_NO_PAD.encode(self.0))
    }
}

/// The epoch of a voter's grants: its boot and a counter it advances each time it begins to
/// ask for a release. A grant carries the epoch it was made in; a release names the epoch it
/// undoes (every grant of that boot at or below it). Text form: `<boot>.<n>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantEpoch {
    pub boot: BootId,
    pub n: u64,
}

impl GrantEpoch {
    /// The first epoch of a process.
    pub fn first(boot: BootId) -> GrantEpoch {
        GrantEpoch { boot, n: 0 }
    }

    /// The epoch after this one: the voter moves to it when it begins to ask for a release of
    /// the grants of this one.
    pub fn next(&self) -> GrantEpoch {
        GrantEpoch {
            boot: self.boot,
            n: self.n.saturating_add(1),
        }
    }

    /// Parses the text form `<boot>.<n>`.
    pub fn parse(text: &str) -> Option<GrantEpoch> {
        let (boot, n) = text.split_once('.')?;
        Some(GrantEpoch {
            boot: BootId(decode_fixed(boot)?),
            n: n.parse()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))?,
        })
    }
}

impl fmt::Display for GrantEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", URL_SAFE_NO_PAD.encode(self.boot.0), self.n)
    }
}

impl fmt::Debug for GrantEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantEpoch({self})")
    }
}

/// On the wire (a vote's `epoch`), its text form.
impl serde::Serialize for GrantEpoch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// From its text form; anything else is an error (the vote is then no vote).
impl<'de> serde::Deserialize<'de> for GrantEpoch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GrantEpoch, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        GrantEpoch::parse(&text).ok_or_else(|| {
            serde::de::Error::custom("not a grant epoch (`<boot id>.<n>`, base64url and decimal)")
        })
    }
}

/// Why a holder did not record a release (it then refuses it: the voter keeps its promise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many releases to remember: {0}")]
pub struct FenceFull(String);

#[derive(Debug, Clone, Copy)]
struct Fence {
    boot: BootId,
    upto: u64,
    set_at: Instant,
}

/// The holder's side of releases: for each voter, the epochs its releases undid. A vote is
/// void when its voter released its epoch (same boot, counter at or below the release's).
#[derive(Debug, Clone)]
pub struct Fences {
    /// A fence is forgotten this long after it was set: every vote it voids was requested
    /// before then and counts at most this long (the holder's `vote_lease`).
    keep: Duration,
    by_voter: BTreeMap<String, Vec<Fence>>,
}

impl Fences {
    /// The fences of a holder whose votes count at most `vote_lease` after their request.
    pub fn new(vote_lease: Duration) -> Fences {
        Fences {
            keep: vote_lease,
            by_voter: BTreeMap::new(),
        }
    }

    /// Sets the lease of later fences' memory (a reload); never below what it was, since
    /// votes already held may count that long.
    pub fn set_lease(&mut self, vote_lease: Duration) {
        self.keep = self.keep.max(vote_lease);
    }

    /// Records `voter`'s release of every grant of `undoes`' boot up to `undoes`, at `now`.
    /// Applying the same release again changes nothing.
    pub fn release(
        &mut self,
        voter: &str,
        undoes: GrantEpoch,
        now: Instant,
    ) -> Result<(), FenceFull> {
        let keep = self.keep;
        let live = |f: &Fence| now.saturating_duration_since(f.set_at) < keep;
        self.by_voter.retain(|_, fences| {
            fences.retain(live);
            !fences.is_empty()
        });
        if !self.by_voter.contains_key(voter) && self.by_voter.len() >= MAX_FENCED_VOTERS {
            return Err(FenceFull(format!("{MAX_FENCED_VOTERS} voters")));
        }
        let fences = self.by_voter.entry(voter.to_string()).or_default();
        if let Some(f) = fences.iter_mut().find(|f| f.boot == undoes.boot) {
            if undoes.n > f.upto {
                *f = Fence {
                    boot: undoes.boot,
                    upto: undoes.n,
                    set_at: now,
                };
            }
            return Ok(());
        }
        if fences.len() >= MAX_FENCES_PER_VOTER {
            return Err(FenceFull(format!(
                "{MAX_FENCES_PER_VOTER} boots of {voter}"
            )));
        }
        fences.push(Fence {
            boot: undoes.boot,
            upto: undoes.n,
            set_at: now,
        });
        Ok(())
    }

    /// Whether a vote of `voter` granted in `epoch` may still be counted.
    pub fn admits(&self, voter: &str, epoch: &GrantEpoch) -> bool {
        self.by_voter.get(voter).is_none_or(|fences| {
            !fences
                .iter()
                .any(|f| f.boot == epoch.boot && epoch.n <= f.upto)
        })
    }

    /// How many fences it remembers.
    pub fn len(&self) -> usize {
        self.by_voter.values().map(Vec::len).sum()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster identity

/// A streaming-replication cluster's identity: PostgreSQL's system identifier, shown in
/// decimal as `pg_controldata` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// From `pg_control_system().system_identifier` (a `bigint`: the same 64 bits, signed).
    pub fn from_system_identifier(id: i64) -> ClusterId {
        ClusterId(id as u64)
    }

    /// Parses `cluster_id` as configured: the decimal system identifier, as `pg_controldata`
    /// prints it or as `pg_control_system()` returns it (negative past 2^63).
    pub fn parse(text: &str) -> Result<ClusterId, String> {
        let t = text.trim();
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{text:?} is not a system identifier (the decimal number of `SELECT \
                 system_identifier FROM pg_control_system()` on the primary)"
            ));
        }
        let id = t
            .parse::<u64>()
            .ok()
            .or_else(|| t.parse::<i64>().ok().map(|i| i as u64))
            .ok_or_else(|| format!("{text:?} is out of range for a system identifier"))?;
        if id == 0 {
            return Err("0 is not a system identifier".into());
        }
        Ok(ClusterId(id))
    }

    fn shown(id: Option<ClusterId>) -> String {
        id.map_or_else(|| "(unknown)".into(), |c| c.0.to_string())
    }

    fn token(id: Option<ClusterId>) -> String {
        id.map_or_else(|| "-".into(), |c| c.0.to_string())
    }

    fn from_token(text: &str) -> Result<Option<ClusterId>, AuthError> {
        match text {
            "-" => Ok(None),
            t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t
                .parse()
                .map(|id| Some(ClusterId(id)))
                .map_err(|_| malformed("cluster")),
            _ => Err(malformed("cluster")),
        }
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a daemon knows of its own cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A primary or standby: the system identifier of its own database (None until observed).
    Data(Option<ClusterId>),
    /// A repmgr witness: the identity that the node its own metadata names as primary reported
    /// in an authenticated answer (None until one did).
    Witness(Option<ClusterId>),
}

/// Why a daemon has no cluster identity (it then grants and counts no vote).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the local database has not been observed yet: its system identifier is unknown")]
    NotObserved,
    #[error(
        "cluster_id is {configured}, but the local database's system identifier is {database}: \
         the configuration and the database belong to different clusters"
    )]
    Mismatch {
        configured: ClusterId,
        database: ClusterId,
    },
    #[error(
        "a witness learns the cluster's identity from the primary its metadata names, and none \
         has answered yet (or set cluster_id to the primary's system identifier)"
    )]
    WitnessUnlearned,
    #[error(
        "cluster_id is {configured}, but the primary this witness's metadata names reports \
         cluster {reported}"
    )]
    WitnessMismatch {
        configured: ClusterId,
        reported: ClusterId,
    },
}

/// The cluster identity a daemon uses, from its configured `cluster_id` (if any) and what it
/// knows of its cluster (see the module's header for the reasoning).
pub fn cluster_identity(
    configured: Option<ClusterId>,
    standing: Standing,
) -> Result<ClusterId, IdentityError> {
    match (standing, configured) {
        (Standing::Data(None), _) => Err(IdentityError::NotObserved),
        (Standing::Data(Some(database)), Some(configured)) if configured != database => {
            Err(IdentityError::Mismatch {
                configured,
                database,
            })
        }
        (Standing::Data(Some(database)), _) => Ok(database),
        (Standing::Witness(Some(reported)), Some(configured)) if reported != configured => {
            Err(IdentityError::WitnessMismatch {
                configured,
                reported,
            })
        }
        (Standing::Witness(_), Some(configured)) => Ok(configured),
        (Standing::Witness(Some(reported)), None) => Ok(reported),
        (Standing::Witness(None), None) => Err(IdentityError::WitnessUnlearned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const A: &[u8] = &[0xA1; 32];
    const B: &[u8] = &[0xB2; 40];
    const C: &[u8] = &[0xC3; 64];
    const CLUSTER: ClusterId = ClusterId(7_319_220_318_244_000_001);
    const OTHER: ClusterId = ClusterId(7_319_220_318_244_000_002);
    const LIFETIME: Duration = Duration::from_secs(3);

    const VOTE: Exchange<'static> = Exchange {
        method: "GET",
        target: "/vote?candidate=node1",
        body: b"",
    };

    fn keys(secrets: &[&[u8]]) -> Keys {
        Keys::from_secrets(secrets).expect("test keys")
    }

    fn nonce(n: u64) -> Nonce {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&n.to_be_bytes());
        Nonce::from_bytes(b)
    }

    fn ask(from: &str, to: &str, n: u64, ticket: Option<Ticket>) -> RequestClaims {
        RequestClaims {
            from: from.into(),
            to: to.into(),
            cluster: Some(CLUSTER),
            nonce: nonce(n),
            ticket,
        }
    }

    fn answer(from: &str, to: &str, ticket: Option<Ticket>) -> AnswerClaims {
        AnswerClaims {
            from: from.into(),
            to: to.into(),
            cluster: Some(CLUSTER),
            ticket,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Every variant of `header` with one field's value replaced by another well-formed one.
    fn tampered_headers(header: &str) -> Vec<String> {
        let other_nonce = nonce(999).to_string();
        let other_ticket = Ticket::token(Some(&Ticket([7; 24])));
        let replacements = [
            ("from=", "from=node9"),
            ("to=", "to=node9"),
            ("cluster=", "cluster=1234"),
            ("cluster=", "cluster=-"),
            ("nonce=", &*format!("nonce={other_nonce}")),
            ("ticket=", &*format!("ticket={other_ticket}")),
            ("ticket=", "ticket=-"),
        ];
        let mut out = Vec::new();
        for (prefix, with) in replacements {
            let Some(part) = header.split(' ').find(|p| p.starts_with(prefix)) else {
                continue;
            };
            if part != with {
                out.push(header.replacen(part, with, 1));
            }
        }
        out
    }

    #[test]
    fn a_request_round_trips_and_every_bound_field_is_checked() {
        let k = keys(&[A]);
        let ticket = ReplayGuard::with_secret([5; 64], Instant::now(), LIFETIME)
            .ticket("node1", Instant::now());
        let claims = ask("node1", "node2", 1, Some(ticket));
        let header = k.sign_request(&claims, &VOTE);
        assert_eq!(k.verify_request(&header, &VOTE), Ok(claims.clone()));
        assert!(header.len() < 300, "{} bytes: {header}", header.len());

        let mut cases = 0;
        for bad in tampered_headers(&header) {
            assert_eq!(
                k.verify_request(&bad, &VOTE),
                Err(AuthError::BadMac),
                "{bad}"
            );
            cases += 1;
        }
        let exchanges = [
            Exchange {
                method: "POST",
                ..VOTE
            },
            Exchange {
                target: "/vote?candidate=node3",
                ..VOTE
            },
            Exchange {
                target: "/release",
                ..VOTE
            },
            Exchange {
                body: b"{}",
                ..VOTE
            },
        ];
        for ex in exchanges {
            assert_eq!(
                k.verify_request(&header, &ex),
                Err(AuthError::BadMac),
                "{ex:?}"
            );
            cases += 1;
        }
        // A node with another key knows nothing of this one.
        let stranger = keys(&[B]);
        assert_eq!(
            stranger.verify_request(&header, &VOTE),
            Err(AuthError::UnknownKey(k.signing()))
        );
        // The same claims and key id with another key's MAC (a key id collision) fail the MAC.
        let forged = keys(&[B]).sign_request(&claims, &VOTE).replacen(
            &format!("key={}", stranger.signing()),
            &format!("key={}", k.signing()),
            1,
        );
        assert_eq!(k.verify_request(&forged, &VOTE), Err(AuthError::BadMac));
        cases += 2;
        println!("request: {cases} tampered requests refused");
        assert_eq!(cases, 7 + 4 + 2);
    }

    #[test]
    fn node_names_of_any_spelling_cross_the_header() {
        let k = keys(&[A]);
        let mut cases = 0;
        for name in ["node1", "db-1.example", "nœud 2", "a=b c", "%41", "x\ty"] {
            let claims = RequestClaims {
                from: name.into(),
                to: format!("{name}/to"),
                ..ask("x", "y", 2, None)
            };
            let header = k.sign_request(&claims, &VOTE);
            assert!(header.is_ascii() && !header.contains('\t'), "{header}");
            assert_eq!(header.split(' ').count(), 8, "{header}");
            assert_eq!(k.verify_request(&header, &VOTE), Ok(claims));
            cases += 1;
        }
        println!("{cases} node names round-tripped");
    }

    #[test]
    fn an_answer_binds_the_request_status_and_every_byte_of_the_body() {
        let k = keys(&[A]);
        let n = nonce(42);
        let body = br#"{"node":"node2","vote":"node1","lease_ms":3000,"exclusive_ms":0}"#;
        let claims = answer("node2", "node1", None);
        let header = k.sign_answer(&claims, &n, &VOTE, 200, body);
        assert_eq!(
            k.verify_answer(&header, &n, &VOTE, 200, body),
            Ok(claims.clone())
        );
        let mut cases = 0;
        // Every byte of the body, flipped.
        for i in 0..body.len() {
            let mut b = body.to_vec();
            b[i] ^= 0x01;
            assert_eq!(
                k.verify_answer(&header, &n, &VOTE, 200, &b),
                Err(AuthError::BadMac)
            );
            cases += 1;
        }
        // Truncated, extended.
        for b in [&body[..body.len() - 1], &[&body[..], b" "].concat()[..]] {
            assert_eq!(
                k.verify_answer(&header, &n, &VOTE, 200, b),
                Err(AuthError::BadMac)
            );
            cases += 1;
        }
        // Another status, another request's nonce (a replayed answer), another request.
        assert_eq!(
            k.verify_answer(&header, &n, &VOTE, 503, body),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            k.verify_answer(&header, &nonce(43), &VOTE, 200, body),
            Err(AuthError::BadMac)
        );
        let wal = Exchange {
            target: "/wal",
            ..VOTE
        };
        assert_eq!(
            k.verify_answer(&header, &n, &wal, 200, body),
            Err(AuthError::BadMac)
        );
        cases += 3;
        for bad in tampered_headers(&header) {
            assert_eq!(
                k.verify_answer(&bad, &n, &VOTE, 200, body),
                Err(AuthError::BadMac),
                "{bad}"
            );
            cases += 1;
        }
        // A request header is not an answer header, and the labels keep the MACs apart.
        let req = k.sign_request(&ask("node2", "node1", 42, None), &VOTE);
        assert!(matches!(
            k.verify_answer(&req, &n, &VOTE, 200, body),
            Err(AuthError::Malformed(_))
        ));
        cases += 1;
        println!("answer: {cases} forged or replayed answers refused");
    }

    #[test]
    fn the_claims_must_name_this_node_its_peer_and_its_cluster() {
        let claims = ask("node1", "node2", 1, None);
        assert_eq!(claims.addressed("node2", Some(CLUSTER)), Ok(()));
        assert_eq!(
            claims.addressed("node3", Some(CLUSTER)),
            Err(AuthError::WrongRecipient {
                to: "node2".into(),
                me: "node3".into()
            })
        );
        assert_eq!(
            claims.addressed("node2", Some(OTHER)),
            Err(AuthError::WrongCluster {
                theirs: Some(CLUSTER),
                mine: Some(OTHER)
            })
        );
        // Without an identity on either side nothing is accepted.
        assert!(claims.addressed("node2", None).is_err());
        let anonymous = RequestClaims {
            cluster: None,
            ..claims
        };
        assert!(anonymous.addressed("node2", Some(CLUSTER)).is_err());

        let a = answer("node2", "node1", None);
        assert_eq!(a.check("node2", "node1", Some(CLUSTER)), Ok(()));
        assert!(matches!(
            a.check("node3", "node1", Some(CLUSTER)),
            Err(AuthError::WrongResponder { .. })
        ));
        assert!(matches!(
            a.check("node2", "node4", Some(CLUSTER)),
            Err(AuthError::WrongRecipient { .. })
        ));
        assert!(matches!(
            a.check("node2", "node1", Some(OTHER)),
            Err(AuthError::WrongCluster { .. })
        ));
        assert_eq!(a.check_peer("node2", "node1"), Ok(()));
        let shown = AuthError::WrongCluster {
            theirs: Some(CLUSTER),
            mine: None,
        }
        .to_string();
        assert_eq!(
            shown,
            "cluster 7319220318244000001 is not this node's cluster (unknown)"
        );
    }

    /// The rotation of the header: add the new key second everywhere, then first everywhere,
    /// then drop the old one. Nodes one step apart in that rollout always understand each
    /// other; two steps apart they may not (shown, so the order matters).
    #[test]
    fn keys_rotate_without_downtime() {
        let stages = [keys(&[A]), keys(&[A, B]), keys(&[B, A]), keys(&[B])];
        let mut pairs = 0;
        for (i, signer) in stages.iter().enumerate() {
            for (j, verifier) in stages.iter().enumerate() {
                let claims = ask("node1", "node2", (i * 4 + j) as u64, None);
                let header = signer.sign_request(&claims, &VOTE);
                let ok = verifier.verify_request(&header, &VOTE).is_ok();
                if i.abs_diff(j) <= 1 {
                    assert!(ok, "stage {i} -> stage {j}");
                    pairs += 1;
                }
                if (i, j) == (0, 3) || (i, j) == (3, 0) {
                    assert!(!ok, "stage {i} -> stage {j}: the old key is gone");
                }
            }
        }
        assert_eq!(
            stages[1].signing(),
            stages[0].signing(),
            "the added key only verifies"
        );
        assert_eq!(
            stages[2].ids(),
            vec![stages[3].signing(), stages[0].signing()]
        );
        println!("rotation: {pairs} neighbouring stage pairs interoperate");
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let k = keys(&[A]);
        let header = k.sign_request(&ask("node1", "node2", 1, None), &VOTE);
        let mut cases = 0;
        // Every prefix, and every position with a byte replaced.
        for end in 0..header.len() {
            assert!(k.verify_request(&header[..end], &VOTE).is_err());
            cases += 1;
        }
        for i in 0..header.len() {
            for c in [b' ', b'=', b'%', b'A', b'-'] {
                let mut b = header.clone().into_bytes();
                if b[i] == c {
                    continue;
                }
                b[i] = c;
                let bad = String::from_utf8(b).expect("ascii");
                assert!(k.verify_request(&bad, &VOTE).is_err(), "{bad}");
                cases += 1;
            }
        }
        for bad in [
            "".to_string(),
            "v2 key=x".into(),
            format!("{header} extra=1"),
            format!("v1 {}", "x".repeat(MAX_HEADER_BYTES)),
            header.replace("cluster=", "cluster=12a"),
            header.replace("from=node1", "from="),
            header.replace("from=node1", "from=%FF"),
        ] {
            assert!(
                matches!(k.verify_request(&bad, &VOTE), Err(AuthError::Malformed(_))),
                "{bad}"
            );
            cases += 1;
        }
        println!("{cases} malformed headers refused");
    }

    /// The first contact, and a recipient that restarts: the request without a usable ticket is
    /// refused with a signed answer that brings one, the sender asks again at once.
    #[test]
    fn a_sender_without_a_ticket_gets_one_and_asks_again() {
        let (voter_keys, candidate_keys) = (keys(&[A]), keys(&[A]));
        let t0 = Instant::now();
        let mut guard = ReplayGuard::with_secret([1; 64], t0, LIFETIME);
        let mut book = TicketBook::default();
        let mut n = 0;
        let mut exchange = |guard: &mut ReplayGuard, book: &mut TicketBook, now: Instant| {
            n += 1;
            let sent_ticket = book.get("node2");
            let claims = ask("node1", "node2", n, sent_ticket);
            let header = candidate_keys.sign_request(&claims, &VOTE);
            // The voter's side.
            let verified = voter_keys
                .verify_request(&header, &VOTE)
                .expect("authentic");
            verified
                .addressed("node2", Some(CLUSTER))
                .expect("for node2");
            let (status, body): (u16, &[u8]) = match guard.admit(&verified, now) {
                Ok(()) => (200, b"granted"),
                Err(e) => {
                    assert!(e.wants_ticket(), "{e}");
                    (401, b"ticket")
                }
            };
            let reply = answer("node2", "node1", Some(guard.ticket("node1", now)));
            let auth = voter_keys.sign_answer(&reply, &verified.nonce, &VOTE, status, body);
            // The candidate's side.
            let got = candidate_keys
                .verify_answer(&auth, &claims.nonce, &VOTE, status, body)
                .expect("authentic answer");
            got.check("node2", "node1", Some(CLUSTER))
                .expect("from node2");
            book.learn("node2", &got);
            (status, worth_retrying(status, sent_ticket.as_ref(), &got))
        };
        assert_eq!(exchange(&mut guard, &mut book, t0), (401, true));
        assert_eq!(exchange(&mut guard, &mut book, t0 + ms(1)), (200, false));
        // Steady state: each answer brings the next ticket.
        for i in 1..=10 {
            assert_eq!(
                exchange(&mut guard, &mut book, t0 + ms(1000 * i)),
                (200, false)
            );
        }
        // The voter restarts: its new process knows no ticket of the old one.
        let mut restarted = ReplayGuard::with_secret([2; 64], t0 + ms(20_000), LIFETIME);
        assert_eq!(
            exchange(&mut restarted, &mut book, t0 + ms(21_000)),
            (401, true)
        );
        assert_eq!(
            exchange(&mut restarted, &mut book, t0 + ms(21_001)),
            (200, false)
        );
        // The candidate paused past the lifetime: one more round trip.
        assert_eq!(
            exchange(&mut restarted, &mut book, t0 + ms(30_000)),
            (401, true)
        );
        assert_eq!(
            exchange(&mut restarted, &mut book, t0 + ms(30_001)),
            (200, false)
        );
    }

    #[test]
    fn a_replayed_request_is_refused_and_changes_nothing() {
        let t0 = Instant::now();
        let mut guard = ReplayGuard::with_secret([3; 64], t0, LIFETIME);
        let ticket = guard.ticket("node1", t0);
        let first = ask("node1", "node2", 1, Some(ticket));
        assert_eq!(guard.admit(&first, t0 + ms(10)), Ok(()));
        let mut cases = 0;
        // Replayed within the lifetime, at any instant: refused, nothing remembered anew.
        for at in [10, 11, 500, 2999] {
            assert_eq!(guard.admit(&first, t0 + ms(at)), Err(AuthError::Replayed));
            assert_eq!(guard.remembered(), 1);
            cases += 1;
        }
        // After the lifetime: the ticket is stale, even once the nonce is forgotten.
        for at in [3000, 3001, 60_000] {
            assert_eq!(
                guard.admit(&first, t0 + ms(at)),
                Err(AuthError::StaleTicket { age: ms(at) })
            );
            cases += 1;
        }
        // Another nonce under the same ticket is a new request.
        assert_eq!(
            guard.admit(&ask("node1", "node2", 2, Some(ticket)), t0 + ms(20)),
            Ok(())
        );
        // A ticket issued to node1 is not node3's.
        assert_eq!(
            guard.admit(&ask("node3", "node2", 3, Some(ticket)), t0 + ms(20)),
            Err(AuthError::ForeignTicket)
        );
        // A ticket of the recipient's previous process (a recording from before it restarted).
        let restarted = &mut ReplayGuard::with_secret([4; 64], t0, LIFETIME);
        assert_eq!(
            restarted.admit(&first, t0 + ms(10)),
            Err(AuthError::ForeignTicket)
        );
        assert_eq!(restarted.remembered(), 0);
        // A forged ticket (any bytes), a ticket from the future, no ticket.
        let forged = Ticket([9; 24]);
        assert_eq!(
            guard.admit(&ask("node1", "node2", 4, Some(forged)), t0),
            Err(AuthError::ForeignTicket)
        );
        let later = guard.ticket("node1", t0 + ms(500));
        assert_eq!(
            guard.admit(&ask("node1", "node2", 5, Some(later)), t0 + ms(499)),
            Err(AuthError::ForeignTicket)
        );
        assert_eq!(
            guard.admit(&ask("node1", "node2", 6, None), t0),
            Err(AuthError::NoTicket)
        );
        cases += 5;
        assert_eq!(guard.remembered(), 2, "refusals remember nothing");
        println!("replay: {cases} replayed, stale or foreign requests refused");
    }

    /// A reload that shortens the lifetime keeps every nonce as long as the longest lifetime;
    /// one that lengthens it never lets a forgotten nonce through.
    #[test]
    fn a_lifetime_change_never_lets_a_replay_through() {
        let t0 = Instant::now();
        let mut guard = ReplayGuard::with_secret([3; 64], t0, LIFETIME);
        let ticket = guard.ticket("node1", t0);
        let req = ask("node1", "node2", 1, Some(ticket));
        guard.admit(&req, t0).expect("first");
        guard.set_lifetime(ms(1000));
        assert!(matches!(
            guard.admit(&req, t0 + ms(1500)),
            Err(AuthError::StaleTicket { .. })
        ));
        guard.set_lifetime(ms(10_000));
        // Fill node1's memory so that a purge runs: the first nonce must survive it.
        let mut admitted = 0;
        for n in 2..=(MAX_NONCES_PER_SENDER as u64 + 10) {
            if guard
                .admit(&ask("node1", "node2", n, Some(ticket)), t0 + ms(5000))
                .is_ok()
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, MAX_NONCES_PER_SENDER - 1);
        assert_eq!(guard.admit(&req, t0 + ms(5000)), Err(AuthError::Replayed));
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_distinct_nonces() {
        let k = keys(&[A]);
        let t0 = Instant::now();
        let mut guard = ReplayGuard::with_secret([6; 64], t0, LIFETIME);
        let ticket = guard.ticket("node1", t0);
        let flood = 100_000u64;
        let (mut admitted, mut busy) = (0, 0);
        for n in 0..flood {
            let at = t0 + Duration::from_micros(n * 20); // 2 s of flood, within the lifetime
            match guard.admit(&ask("node1", "node2", n, Some(ticket)), at) {
                Ok(()) => admitted += 1,
                Err(AuthError::Busy(who)) => {
                    assert_eq!(who, "node1");
                    busy += 1
                }
                Err(e) => panic!("{e}"),
            }
            assert!(guard.remembered() <= MAX_NONCES_PER_SENDER);
        }
        assert_eq!(admitted, MAX_NONCES_PER_SENDER);
        // Another member is not locked out by node1's flood.
        let t3 = guard.ticket("node3", t0 + ms(2000));
        assert_eq!(
            guard.admit(&ask("node3", "node2", 1, Some(t3)), t0 + ms(2000)),
            Ok(())
        );
        // Past the lifetime, node1's memory is purged at its next request.
        let fresh = guard.ticket("node1", t0 + ms(3500));
        let next = ask("node1", "node2", flood + 1, Some(fresh));
        assert_eq!(guard.admit(&next, t0 + ms(3500)), Ok(()));
        assert_eq!(guard.remembered(), 2);

        // A flood of distinct sender names (only a key holder can send one).
        let mut names_busy = 0;
        for s in 0..1000 {
            let name = format!("fake{s}");
            let t = guard.ticket(&name, t0 + ms(4000));
            if guard
                .admit(&ask(&name, "node2", 1, Some(t)), t0 + ms(4000))
                .is_err()
            {
                names_busy += 1;
            }
        }
        assert!(guard.remembered() <= MAX_SENDERS);
        assert_eq!(names_busy, 1000 - (MAX_SENDERS - 2));

        // A flood without the key never reaches the guard: its MAC fails first.
        let stranger = keys(&[B]);
        let before = guard.remembered();
        let mut refused = 0;
        for n in 0..10_000u64 {
            let claims = ask("node1", "node2", flood + 10 + n, Some(fresh));
            let header = stranger.sign_request(&claims, &VOTE);
            if let Ok(c) = k.verify_request(&header, &VOTE) {
                let _ = guard.admit(&c, t0 + ms(3600));
            } else {
                refused += 1;
            }
        }
        assert_eq!((refused, guard.remembered()), (10_000, before));
        println!(
            "flood: {flood} distinct nonces of one sender: {admitted} remembered (the bound), \
             {busy} refused; 1000 sender names: {names_busy} refused; 10000 unauthenticated: \
             {refused} refused, 0 remembered"
        );
    }

    // --- releases bound to grants ---------------------------------------------------------

    fn boot(b: u8) -> BootId {
        BootId::from_bytes([b; 16])
    }

    #[test]
    fn a_release_voids_only_its_senders_grants_up_to_its_epoch() {
        let t0 = Instant::now();
        let lease = ms(3000);
        let mut fences = Fences::new(lease);
        let n2 = GrantEpoch::first(boot(2));
        let n3 = GrantEpoch::first(boot(3));
        // node2 begins asking for a release: its grants so far (epoch n2) are undone; grants
        // made after it asked carry the next epoch.
        let asked = n2;
        let after = n2.next();
        fences.release("node2", asked, t0).expect("recorded");
        assert!(!fences.admits("node2", &n2));
        assert!(fences.admits("node2", &after), "a newer grant stands");
        assert!(fences.admits("node3", &n3), "another voter's grant stands");
        assert!(
            fences.admits("node3", &n2),
            "node2's epoch under node3's name stands"
        );
        assert!(
            fences.admits("node2", &GrantEpoch::first(boot(9))),
            "another process of node2 is untouched"
        );
        // The same release again (a replay), or an older one, changes nothing.
        let before = format!("{fences:?}");
        fences.release("node2", asked, t0 + ms(10)).expect("same");
        assert_eq!(format!("{fences:?}"), before);
        fences
            .release("node2", after.next(), t0 + ms(20))
            .expect("later");
        assert!(!fences.admits("node2", &after));
        fences
            .release("node2", asked, t0 + ms(30))
            .expect("old replayed");
        assert!(
            !fences.admits("node2", &after),
            "an old release does not lift a newer one"
        );
        assert!(fences.admits("node2", &after.next().next()));
        // Forgotten a lease after it was set: every vote it voided has expired by then.
        fences
            .release("node3", n3, t0 + ms(3020))
            .expect("another voter");
        assert_eq!(fences.len(), 1, "node2's fence is gone");
        assert!(fences.admits("node2", &n2));
    }

    #[test]
    fn fences_stay_bounded() {
        let t0 = Instant::now();
        let mut fences = Fences::new(ms(3000));
        let mut refused = 0;
        for v in 0..1000u32 {
            let epoch = GrantEpoch::first(boot((v % 251) as u8));
            if fences.release(&format!("voter{v}"), epoch, t0).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 1000 - MAX_FENCED_VOTERS);
        for b in 0..=255u8 {
            let _ = fences.release("voter0", GrantEpoch::first(boot(b)), t0);
        }
        assert!(fences.len() <= MAX_FENCED_VOTERS - 1 + MAX_FENCES_PER_VOTER);
        // A lease later, room again.
        assert!(
            fences
                .release("late", GrantEpoch::first(boot(1)), t0 + ms(3000))
                .is_ok()
        );
        assert_eq!(fences.len(), 1);
        println!("fences: {refused} releases of 1000 voters refused at the bound");
    }

    #[test]
    fn epochs_cross_the_wire_as_text() {
        let e = GrantEpoch {
            boot: boot(0xAB),
            n: 41,
        };
        let text = e.to_string();
        assert_eq!(GrantEpoch::parse(&text), Some(e));
        assert_eq!(e.next().n, 42);
        for bad in [
            "",
            ".",
            "x.1",
            &format!("{text}x"),
            &text.replace(".41", ".-1"),
        ] {
            assert_eq!(GrantEpoch::parse(bad), None, "{bad:?}");
        }
        assert!(BootId::random().is_ok() && BootId::random().ok() != BootId::random().ok());
    }

    // --- cluster identity -----------------------------------------------------------------

    #[test]
    fn a_data_node_uses_its_system_identifier_and_a_witness_learns_or_is_told() {
        use Standing::{Data, Witness};
        let cases = [
            (None, Data(Some(CLUSTER)), Ok(CLUSTER)),
            (Some(CLUSTER), Data(Some(CLUSTER)), Ok(CLUSTER)),
            (
                Some(OTHER),
                Data(Some(CLUSTER)),
                Err(IdentityError::Mismatch {
                    configured: OTHER,
                    database: CLUSTER,
                }),
            ),
            (None, Data(None), Err(IdentityError::NotObserved)),
            (Some(CLUSTER), Data(None), Err(IdentityError::NotObserved)),
            (None, Witness(Some(CLUSTER)), Ok(CLUSTER)),
            (None, Witness(None), Err(IdentityError::WitnessUnlearned)),
            (Some(CLUSTER), Witness(None), Ok(CLUSTER)),
            (Some(CLUSTER), Witness(Some(CLUSTER)), Ok(CLUSTER)),
            (
                Some(CLUSTER),
                Witness(Some(OTHER)),
                Err(IdentityError::WitnessMismatch {
                    configured: CLUSTER,
                    reported: OTHER,
                }),
            ),
        ];
        for (configured, standing, expected) in &cases {
            assert_eq!(
                cluster_identity(*configured, *standing),
                *expected,
                "{configured:?} {standing:?}"
            );
        }
        println!("identity: {} cases", cases.len());
    }

    /// Two clusters with the tutorial's names; a `[peers]` entry of cluster A points at B's
    /// witness. The witness learned B's identity from B's primary; A's request is refused by
    /// it, and its answer is not counted by A's candidate, even with a shared key.
    #[test]
    fn a_witness_of_another_cluster_never_counts() {
        let shared = keys(&[A]);
        let id_a = cluster_identity(None, Standing::Data(Some(CLUSTER))).expect("A");
        let id_b_primary = cluster_identity(None, Standing::Data(Some(OTHER))).expect("B");
        // The witness of B learned its identity from the primary its own metadata names.
        let b_witness = cluster_identity(None, Standing::Witness(Some(id_b_primary))).expect("w");
        assert_eq!(b_witness, OTHER);

        let request = RequestClaims {
            cluster: Some(id_a),
            ..ask("node1", "witness", 1, None)
        };
        let header = shared.sign_request(&request, &VOTE);
        let verified = shared.verify_request(&header, &VOTE).expect("same key");
        assert!(matches!(
            verified.addressed("witness", Some(b_witness)),
            Err(AuthError::WrongCluster { .. })
        ));
        // Had it answered anyway (a witness of an older primgr), the candidate would not count it.
        let reply = AnswerClaims {
            cluster: Some(b_witness),
            ..answer("witness", "node1", None)
        };
        let auth = shared.sign_answer(&reply, &request.nonce, &VOTE, 200, b"vote");
        let got = shared
            .verify_answer(&auth, &request.nonce, &VOTE, 200, b"vote")
            .expect("authentic");
        assert!(matches!(
            got.check("witness", "node1", Some(id_a)),
            Err(AuthError::WrongCluster { .. })
        ));
    }

    #[test]
    fn system_identifiers_parse_as_postgres_prints_them() {
        assert_eq!(ClusterId::parse("7319220318244000001"), Ok(CLUSTER));
        assert_eq!(ClusterId::parse(" 7319220318244000001\n"), Ok(CLUSTER));
        // Past 2^63 pg_control_system() returns it negative; pg_controldata unsigned.
        let big = ClusterId::from_system_identifier(-2);
        assert_eq!(big, ClusterId(u64::MAX - 1));
        assert_eq!(ClusterId::parse("-2"), Ok(big));
        assert_eq!(ClusterId::parse(&big.to_string()), Ok(big));
        for bad in ["", "-", "0", "12a", "0x10", "99999999999999999999", "1 2"] {
            assert!(ClusterId::parse(bad).is_err(), "{bad:?}");
        }
    }

    // --- key files --------------------------------------------------------------------------

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("primgr-auth-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn line(secret: &[u8]) -> String {
        format!("{KEY_PREFIX}{}", KEY_BASE64.encode(secret))
    }

    #[test]
    fn a_key_file_is_parsed_with_comments_and_rotation_order() {
        let text = format!(
            "# primgr peer keys\n\n{}\r\n  {}  \n# old key, drop after the rollout\n{}\n",
            line(B),
            line(A),
            line(C).trim_end_matches('=')
        );
        let k = Keys::parse(&text).expect("valid");
        let (a, b, c) = (keys(&[A]), keys(&[B]), keys(&[C]));
        assert_eq!(k.ids(), vec![b.signing(), a.signing(), c.signing()]);
        assert_eq!(k.signing(), b.signing());
    }

    #[test]
    fn bad_key_lines_are_refused_by_line_without_the_key() {
        let short = line(&[0x55; 31]);
        let long = line(&[0x55; 65]);
        let cases = [
            (String::new(), KeyFileReason::NoKey),
            ("# nothing\n\n".into(), KeyFileReason::NoKey),
            (
                format!("{}\n{short}", line(A)),
                KeyFileReason::Length { line: 2, bytes: 31 },
            ),
            (long.clone(), KeyFileReason::Length { line: 1, bytes: 65 }),
            (
                format!("hmac-sha1:{}", KEY_BASE64.encode(A)),
                KeyFileReason::NotAKey { line: 1 },
            ),
            (format!("{}!", line(A)), KeyFileReason::NotAKey { line: 1 }),
            (
                format!("{} # comment", line(A)),
                KeyFileReason::NotAKey { line: 1 },
            ),
            (
                format!("{}\n#\n{}", line(A), line(A)),
                KeyFileReason::Duplicate { line: 3, first: 1 },
            ),
        ];
        for (text, reason) in &cases {
            let got = Keys::parse(text).expect_err(text);
            assert_eq!(&got, reason);
            let shown = got.to_string();
            for secret in [A, &[0x55; 31][..], &[0x55; 65][..]] {
                let encoded = KEY_BASE64.encode(secret);
                assert!(!shown.contains(&encoded[..20]), "{shown}");
            }
        }
        println!("{} bad key files refused", cases.len());
    }

    #[test]
    fn a_key_file_others_may_read_or_that_is_not_a_regular_file_is_refused() {
        let dir = Dir::new("perms");
        let good = dir.file("keys", &line(A), 0o600);
        assert_eq!(
            Keys::load(&good).map(|k| k.signing()),
            Ok(keys(&[A]).signing())
        );
        assert!(Keys::load(&dir.file("ro", &line(A), 0o400)).is_ok());
        let mut cases = 0;
        for mode in [0o640, 0o604, 0o620, 0o602, 0o660, 0o644, 0o666, 0o610] {
            let p = dir.file(&format!("m{mode:o}"), &line(A), mode);
            let e = Keys::load(&p).expect_err("group or others");
            assert_eq!(e.reason, KeyFileReason::Permissions { mode });
            assert_eq!(e.path, p);
            let shown = e.to_string();
            assert!(shown.contains(&*p.to_string_lossy()), "{shown}");
            assert!(shown.contains(&format!("{mode:04o}")), "{shown}");
            assert!(!shown.contains(&KEY_BASE64.encode(A)[..20]), "{shown}");
            cases += 1;
        }
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&good, &link).expect("symlink");
        assert_eq!(
            Keys::load(&link).map(|k| k.signing()).map_err(|e| e.reason),
            Err(KeyFileReason::NotRegular("a symbolic link"))
        );
        assert_eq!(
            Keys::load(&dir.0)
                .map(|k| k.signing())
                .map_err(|e| e.reason),
            Err(KeyFileReason::NotRegular("a directory"))
        );
        let socket = dir.0.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("socket");
        assert_eq!(
            Keys::load(&socket)
                .map(|k| k.signing())
                .map_err(|e| e.reason),
            Err(KeyFileReason::NotRegular("a special file"))
        );
        assert!(matches!(
            Keys::load(&dir.0.join("missing"))
                .map(|k| k.signing())
                .map_err(|e| e.reason),
            Err(KeyFileReason::Unreadable(_))
        ));
        let big = dir.file(
            "big",
            &format!("{}\n{}", line(A), "#".repeat(MAX_KEY_FILE_BYTES as usize)),
            0o600,
        );
        assert_eq!(
            Keys::load(&big).map(|k| k.signing()).map_err(|e| e.reason),
            Err(KeyFileReason::TooLarge)
        );
        let binary = dir.0.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            Keys::load(&binary)
                .map(|k| k.signing())
                .map_err(|e| e.reason),
            Err(KeyFileReason::NotText)
        );
        let bad = dir.file("bad", &format!("\n{}", line(&[1; 16])), 0o600);
        let e = Keys::load(&bad).expect_err("short key");
        assert_eq!(
            e.to_string(),
            format!(
                "peer_key_file {}: line 2: a key of 16 bytes; a key has 32 to 64 bytes (256 to 512 \
             bits): make one with `primgr keygen`",
                bad.display()
            )
        );
        cases += 7;
        println!("key file: {cases} files refused");
    }

    #[test]
    fn debug_and_display_never_show_a_secret() {
        let text = format!("{}\n{}", line(A), line(B));
        let k = Keys::parse(&text).expect("valid");
        let guard = ReplayGuard::with_secret([0x77; 64], Instant::now(), LIFETIME);
        let shown = [
            format!("{k:?}"),
            format!("{k:#?}"),
            k.to_string(),
            format!("{guard:?}"),
            format!("{:?}", k.ids()),
        ];
        let secrets = [
            KEY_BASE64.encode(A),
            KEY_BASE64.encode(B),
            URL_SAFE_NO_PAD.encode(A),
            "a1, a1".into(),
            "161, 161".into(),
            "0xa1".into(),
            "119, 119".into(),
            "0x77".into(),
        ];
        for s in &shown {
            for secret in &secrets {
                assert!(!s.contains(secret.as_str()), "{s} shows {secret}");
            }
        }
        assert!(shown[0].contains(&k.signing().to_string()), "{}", shown[0]);
        println!("{}", shown[0]);
    }

    #[test]
    fn keygen_prints_a_fresh_256_bit_key_line() {
        let lines: Vec<String> = (0..3)
            .map(|_| generate_key_line().expect("OS random source"))
            .collect();
        for l in &lines {
            let k = Keys::parse(l).expect("keygen's line parses");
            assert_eq!(k.ids().len(), 1);
            let encoded = l.strip_prefix(KEY_PREFIX).expect("prefix");
            assert_eq!(KEY_BASE64.decode(encoded).expect("base64").len(), 32);
        }
        assert!(lines[0] != lines[1] && lines[1] != lines[2]);
        assert!(Nonce::random().ok() != Nonce::random().ok());
        println!("keygen: {} characters a line", lines[0].len());
    }
}

//! Units as operators write them: sizes (`16MB`, PostgreSQL's units) and durations (`500ms`,
//! humantime's syntax), read and written back.
//!
//! Owns the syntax of both and the words of their errors. An error says what is wrong without
//! repeating the text it was given, so that a caller may show it for any value, a secret's
//! included; a caller that wants the text in its message (a query parameter) adds it itself.

use std::time::Duration;

/// Parses a WAL size the way PostgreSQL and Patroni write them: a whole number of bytes, or a
/// number with one of the units `kB`, `MB`, `GB`, `TB` (1024-based, case as PostgreSQL writes
/// them). Anything else (`10mb`, `-1`, `1.5MB`, an empty text) is an error that says why.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(
            "not a size: a whole number of bytes, optionally with kB, MB, GB or TB".to_string(),
        );
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "kB" => 10,
        "MB" => 20,
        "GB" => 30,
        "TB" => 40,
        _ => {
            return Err(
                "unknown unit (units are kB, MB, GB, TB, as in PostgreSQL; case matters)"
                    .to_string(),
            );
        }
    };
    let too_large = || "too large (at most 16 EB)".to_string();
    let n: u64 = number.parse().map_err(|_| too_large())?;
    n.checked_mul(1 << shift).ok_or_else(too_large)
}

/// A size in the largest unit that shows it exactly (`16MB`, `1536kB`, `100`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TB"), (30, "GB"), (20, "MB"), (10, "kB")] {
        if bytes != 0 && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a duration in humantime's syntax (`500ms`, `2s`, `1m 30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    use humantime::DurationError as E;
    humantime::parse_duration(text).map_err(|e| {
        let why = match e {
            E::InvalidCharacter(at) => format!("an invalid character at position {at}"),
            E::NumberExpected(at) => format!("a number expected at position {at}"),
            E::UnknownUnit { start, .. } => format!(
                "an unknown unit at position {start} (units are ns, us, ms, s, m, h, d, w, M, y)"
            ),
            E::NumberOverflow => "a number too large".to_string(),
            E::Empty => "nothing".to_string(),
        };
        format!("not a duration like \"2s\" or \"500ms\": {why}")
    })
}

/// A duration as [`parse_duration`] reads it (`2s 500ms`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A duration for messages, to the millisecond.
pub fn format_millis(d: Duration) -> String {
    format_duration(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_postgresql_sizes() {
        for (text, want) in [
            ("0", 0),
            ("16777216", 16 << 20),
            ("10kB", 10 << 10),
            ("16MB", 16 << 20),
            ("16 MB", 16 << 20),
            ("2GB", 2 << 30),
            ("1TB", 1 << 40),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "10mb",
            "10KB",
            "-1",
            "",
            "MB",
            "1.5MB",
            "10 parsecs",
            "99999999999TB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [0, 100, 1536 << 10, 16 << 20, 3 << 30] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(16 << 20), "16MB");
    }

    /// Errors name what is wrong, never the text: a secret typed in the wrong place stays out
    /// of the logs.
    #[test]
    fn errors_never_repeat_the_text() {
        let secret = "s3cretpw";
        let mut checked = 0;
        for text in [
            secret.to_string(),
            format!("10{secret}"),
            format!("10 {secret}"),
            format!("{secret}10"),
            format!("99999999999999999999{secret}"),
        ] {
            for e in [parse_size(&text), parse_duration(&text).map(|_| 0)] {
                let e = e.expect_err("refused");
                assert!(!e.contains(secret) && !e.contains("s3cr"), "{text}: {e}");
                checked += 1;
            }
        }
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        println!("{checked} refusals, none repeating its text");
    }

    #[test]
    fn durations_read_back() {
        for d in [
            Duration::from_millis(10),
            Duration::from_millis(2500),
            Duration::from_secs(90),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_millis(Duration::from_micros(2_500_700)), "2s 500ms");
    }
}

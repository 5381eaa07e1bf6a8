//! The small statistics the tests and the benchmark share: nearest-rank quantiles of numbers
//! ([`quantile`], [`median`]) and of durations ([`duration_quantile`]), and the way figures are
//! written ([`micros`], [`mib`]).

use std::time::Duration;

/// The element of rank `ceil(q * n)` (1-based, clamped to 1..=n) of a sorted slice.
fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied()
}

fn sorted_numbers(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The q-quantile (0..=1) by nearest rank, NaNs ignored; NaN for an empty slice.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    nearest_rank(&sorted_numbers(values), q).unwrap_or(f64::NAN)
}

/// The median (mean of the two middle values for an even count), NaNs ignored; NaN for an
/// empty slice.
pub fn median(values: &[f64]) -> f64 {
    let v = sorted_numbers(values);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The q-quantile (0..=1) of durations by nearest rank (`q = 0` is the least, `1` the
/// greatest); zero for an empty slice.
pub fn duration_quantile(values: &[Duration], q: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    nearest_rank(&v, q).unwrap_or(Duration::ZERO)
}

/// Microseconds as a short human figure: `850 µs`, `1.23 ms`, `503 ms` (`n/a` for NaN).
pub fn micros(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 100_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.0} ms", us / 1000.0)
    }
}

/// Bytes as MiB with one decimal: `9.8 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_figures() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&[7.0, f64::NAN], 0.9), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
        let d: Vec<Duration> = (1..=10).rev().map(Duration::from_millis).collect();
        assert_eq!(duration_quantile(&d, 0.0), Duration::from_millis(1));
        assert_eq!(duration_quantile(&d, 0.9), Duration::from_millis(9));
        assert_eq!(duration_quantile(&d, 1.0), Duration::from_millis(10));
        assert_eq!(duration_quantile(&[], 0.5), Duration::ZERO);
        assert_eq!(micros(850.0), "850 µs");
        assert_eq!(micros(1234.0), "1.23 ms");
        assert_eq!(micros(503_000.0), "503 ms");
        assert_eq!(mib(10 * 1024 * 1024 + 100 * 1024), "10.1 MiB");
    }
}

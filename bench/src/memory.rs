//! Measurement 3: the resident memory of primgr and of the baseline after the load.

use anyhow::Result;
use primgr_lab::procfs::status_kb;
use primgr_lab::stats::mib;

use crate::Servers;
use crate::report::{Findings, Line};

/// Measurement 3: resident memory of both servers after the load.
pub(crate) fn measure(s: &Servers, f: &mut Findings) -> Result<()> {
    let (p_rss, p_hwm, p_parts) = memory(s.primgr_pid)?;
    let (b_rss, b_hwm, b_parts) = memory(s.baseline_pid)?;
    f.lines.push(
        Line::new(
            "3 primgr resident memory after the load (VmRSS: heap and stacks + mapped files; peak VmHWM)",
            format!("{} ({p_parts}; peak {})", mib(p_rss), mib(p_hwm)),
        )
        .target("≤ 10 MiB (peak)", p_hwm <= 10 * 1024 * 1024),
    );
    f.lines.push(Line::new(
        "3 baseline resident memory after the load (VmRSS: heap and stacks + mapped files; peak VmHWM)",
        format!("{} ({b_parts}; peak {})", mib(b_rss), mib(b_hwm)),
    ));
    Ok(())
}

/// VmRSS and VmHWM of a process, in bytes, and what VmRSS is made of: anonymous pages (heap,
/// stacks) + pages of mapped files (the binary's code and data, the C library).
fn memory(pid: u32) -> Result<(u64, u64, String)> {
    let parts = format!(
        "{} + {}",
        mib(status_kb(pid, "RssAnon")? * 1024),
        mib(status_kb(pid, "RssFile")? * 1024)
    );
    Ok((
        status_kb(pid, "VmRSS")? * 1024,
        status_kb(pid, "VmHWM")? * 1024,
        parts,
    ))
}

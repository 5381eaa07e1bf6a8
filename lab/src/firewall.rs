//! iptables rules in a chain of the lab's own, hooked into `INPUT` and `OUTPUT`.
//! Only the lab's chain and its two jump rules are ever touched.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::cmd::{Run, tool};

fn ipt(what: &str, args: &[&str]) -> Run {
    let mut argv = vec![tool("iptables"), "-w".into(), "5".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Run::new(what, argv).timeout(Duration::from_secs(15))
}

/// Whether the command succeeds (used for `-C` checks and `-S chain` existence).
fn succeeds(args: &[&str]) -> Result<bool> {
    Ok(ipt("iptables check", args).output_sync()?.status.success())
}

pub(crate) fn chain_exists(chain: &str) -> Result<bool> {
    succeeds(&["-S", chain])
}

/// Create the chain and the jumps from INPUT and OUTPUT if missing.
pub(crate) fn ensure_chain(chain: &str) -> Result<()> {
    if !chain_exists(chain)? {
        ipt("iptables create chain", &["-N", chain]).run_sync()?;
    }
    for hook in ["INPUT", "OUTPUT"] {
        if !succeeds(&["-C", hook, "-j", chain])? {
            ipt("iptables hook chain", &["-I", hook, "1", "-j", chain]).run_sync()?;
        }
    }
    Ok(())
}

/// Append `rule` (match + target, without `-A chain`) unless already present.
pub(crate) fn add_rule(chain: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if succeeds(&check)? {
        return Ok(());
    }
    let mut add = vec!["-A", chain];
    add.extend_from_slice(rule);
    ipt("iptables add rule", &add).run_sync()?;
    Ok(())
}

/// Delete every copy of `rule` from the chain (no error if absent or if the chain is missing).
pub(crate) fn delete_rule(chain: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    let mut del = vec!["-D", chain];
    del.extend_from_slice(rule);
    for _ in 0..100 {
        if !succeeds(&check)? {
            return Ok(());
        }
        ipt("iptables delete rule", &del).run_sync()?;
    }
    bail!("iptables: could not delete rule {rule:?} from {chain}")
}

/// Remove all rules of the chain (keeps the chain).
pub(crate) fn flush(chain: &str) -> Result<()> {
    if chain_exists(chain)? {
        ipt("iptables flush", &["-F", chain]).run_sync()?;
    }
    Ok(())
}

/// `iptables -S <chain>` lines, empty if the chain does not exist.
pub(crate) fn list(chain: &str) -> Result<Vec<String>> {
    let out = ipt("iptables list", &["-S", chain]).output_sync()?;
    if !out.status.success() {
        return Ok(Vec::new());
    }
    Ok(out.stdout.lines().map(str::to_string).collect())
}

/// Remove the jump rules, flush and delete the chain. No error if it does not exist.
pub(crate) fn remove_chain(chain: &str) -> Result<()> {
    for hook in ["INPUT", "OUTPUT"] {
        for _ in 0..100 {
            if !succeeds(&["-C", hook, "-j", chain])? {
                break;
            }
            ipt("iptables unhook chain", &["-D", hook, "-j", chain]).run_sync()?;
        }
    }
    if chain_exists(chain)? {
        ipt("iptables flush chain", &["-F", chain]).run_sync()?;
        ipt("iptables delete chain", &["-X", chain]).run_sync()?;
    }
    Ok(())
}

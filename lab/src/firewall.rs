//! iptables rules in chains of the lab's own, each hooked into the built-in chains it names
//! (`INPUT` and `OUTPUT` for cuts between addresses, `OUTPUT` only for `owner` matches). Only the
//! lab's chains and their jump rules are ever touched.

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

/// The lab's main chain is hooked into both directions.
pub(crate) const BOTH: &[&str] = &["INPUT", "OUTPUT"];
/// A chain of `owner` matches is hooked into OUTPUT only (the match is invalid elsewhere).
pub(crate) const OUTPUT_ONLY: &[&str] = &["OUTPUT"];

/// Create the chain and the jumps to it from `hooks` if missing.
pub(crate) fn ensure_chain(chain: &str, hooks: &[&str]) -> Result<()> {
    if !chain_exists(chain)? {
        ipt("iptables create chain", &["-N", chain]).run_sync()?;
    }
    for &hook in hooks {
        if !succeeds(&["-C", hook, "-j", chain])? {
            ipt("iptables hook chain", &["-I", hook, "1", "-j", chain]).run_sync()?;
        }
    }
    Ok(())
}

/// Append `rule` (match + target, without `-A chain`) unless already present.
pub(crate) fn add_rule<S: AsRef<str>>(chain: &str, rule: &[S]) -> Result<()> {
    let rule: Vec<&str> = rule.iter().map(AsRef::as_ref).collect();
    let mut check = vec!["-C", chain];
    check.extend_from_slice(&rule);
    if succeeds(&check)? {
        return Ok(());
    }
    let mut add = vec!["-A", chain];
    add.extend_from_slice(&rule);
    ipt("iptables add rule", &add).run_sync()?;
    Ok(())
}

/// Delete every copy of `rule` from the chain (no error if absent or if the chain is missing).
pub(crate) fn delete_rule<S: AsRef<str>>(chain: &str, rule: &[S]) -> Result<()> {
    let rule: Vec<&str> = rule.iter().map(AsRef::as_ref).collect();
    let mut check = vec!["-C", chain];
    check.extend_from_slice(&rule);
    let mut del = vec!["-D", chain];
    del.extend_from_slice(&rule);
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

/// Remove the jump rules from `hooks`, flush and delete the chain. No error if it does not
/// exist.
pub(crate) fn remove_chain(chain: &str, hooks: &[&str]) -> Result<()> {
    for &hook in hooks {
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

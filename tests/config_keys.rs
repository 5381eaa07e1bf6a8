//! Every configuration key, as an operator meets it: each key of `etc/primgr.toml` (set or
//! commented out) has a flag of the same name in `primgr --help` and a row in the README's
//! configuration table, and every flag of a key has its line in `etc/primgr.toml`.

use std::collections::BTreeSet;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The keys of `etc/primgr.toml`: every `key = ...` line, set or commented out (`# key = `),
/// and every table (`[peers]`).
fn example_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(format!("{ROOT}/etc/primgr.toml")).expect("example");
    let (mut keys, mut tables) = (BTreeSet::new(), BTreeSet::new());
    let mut in_table = false;
    for line in text.lines() {
        let l = line.trim();
        if let Some(table) = l.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            tables.insert(table.to_string());
            in_table = true;
            continue;
        }
        // A commented key is `# key = value`; prose never has a bare word before ` = `.
        let l = l.strip_prefix("# ").unwrap_or(l);
        let Some((key, _)) = l.split_once(" = ") else {
            continue;
        };
        let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if bare && !in_table {
            keys.insert(key.to_string());
        }
    }
    (keys, tables)
}

/// The long flags `primgr --help` lists.
fn help_flags() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_primgr"))
        .arg("--help")
        .output()
        .expect("run primgr --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// The README's table row for `key`: the line that starts `| \`key\` |`, as its cells.
fn readme_row(readme: &str, key: &str) -> Option<Vec<String>> {
    let row = format!("| `{key}` |");
    let line = readme.lines().find(|l| l.trim_start().starts_with(&row))?;
    Some(line.split('|').map(|c| c.trim().to_string()).collect())
}

/// Checks `key`'s README row: present, and when its second cell names a flag, that flag.
fn check_row(readme: &str, key: &str, flag: &str, missing: &mut Vec<String>) {
    match readme_row(readme, key) {
        None => missing.push(format!("`{key}` has no row `| `{key}` |` in README.md")),
        Some(cells) => {
            let named = cells.get(2).filter(|c| c.starts_with("`--"));
            if named.is_some_and(|c| !c.starts_with(&format!("`--{flag}"))) {
                missing.push(format!(
                    "README.md's row of `{key}` names another flag: {cells:?}"
                ));
            }
        }
    }
}

#[test]
fn every_key_has_a_flag_a_readme_row_and_an_example_line() {
    let (keys, tables) = example_keys();
    let flags = help_flags();
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    assert!(keys.len() >= 19, "etc/primgr.toml lists {keys:?}");
    let mut missing = Vec::new();
    for key in &keys {
        let flag = key.replace('_', "-");
        if !flags.contains(&flag) {
            missing.push(format!("`{key}` has no flag --{flag}"));
        }
        check_row(&readme, key, &flag, &mut missing);
    }
    // A table's entries come one by one from a flag named as one entry: `[peers]`, `--peer`.
    for table in &tables {
        let flag = table.trim_end_matches('s').replace('_', "-");
        if !flags.contains(&flag) {
            missing.push(format!("[{table}] has no flag --{flag}"));
        }
        check_row(&readme, table, &flag, &mut missing);
    }
    // Conversely, every flag but the command line's own sets a key of the example.
    let own = ["config", "check-config", "help", "version"];
    for flag in &flags {
        let key = flag.replace('-', "_");
        let table = format!("{key}s");
        if !own.contains(&flag.as_str()) && !keys.contains(&key) && !tables.contains(&table) {
            missing.push(format!("--{flag} sets no key of etc/primgr.toml"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
    println!(
        "{} keys and {} table(s) of etc/primgr.toml, each with its flag and README row; {} \
         flags, each a key's",
        keys.len(),
        tables.len(),
        flags.len() - own.len()
    );
}

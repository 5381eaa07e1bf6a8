//! Two tests never share a lab subnet: every test source takes its subnet from the one table,
//! `primgr_lab::SUBNETS`, by its own name, and has no subnet literal of its own (the lab's unit
//! test checks that the table gives every name its own subnet). Reads the sources of the
//! integration tests, the lab's tests, the benchmark and the demo; needs no lab.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use primgr_lab::SUBNETS;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Sources that keep a literal the table must match (files other engineers own this round:
/// their literal is checked against the table instead).
const LITERALS: &[(&str, &str, &str)] = &[
    (
        "tests/api.rs",
        "LabSpec::standard(",
        "api::simultaneous_real_primary_requests_share_one_fan_out",
    ),
    (
        "tests/hostile_http.rs",
        "const SUBNET: u8 = ",
        "hostile_http::hostile_clients_get_4xx_or_a_closed_connection_and_health_checks_keep_answering",
    ),
];

/// Every `.rs` file under `dir` (recursively).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source's code lines (comments dropped: they may name addresses as examples).
fn code(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect()
}

/// The number right after each occurrence of `prefix` in `code` (spaces and newlines skipped).
fn numbers_after(code: &str, prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// Subnet literals in `code`: a lab spec, a shifted subnet or an address `127.0.N.x` with a
/// literal N other than 0 (127.0.0.x is the machine's own, no lab's).
fn literals(code: &str) -> Vec<String> {
    let squashed: String = code.split_whitespace().collect();
    let mut found = Vec::new();
    // Any constant whose name says it is a subnet (`const SUBNET_FENCE: u8 = 152;`).
    for line in code.lines() {
        let line: String = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("const")
            && let Some((name, value)) = rest.split_once(":u8=")
            && name != "SUBNET"
            && name.to_ascii_uppercase().contains("SUBNET")
        {
            found.push(format!("const{name}:u8={}", value.trim_end_matches(';')));
        }
    }
    for prefix in [
        "LabSpec::standard(",
        "LabSpec::new(",
        "lab_subnet(",
        "constSUBNET:u8=",
        "subnet:",
        "Ipv4Addr::new(127,0,",
        "[127,0,",
        "127.0.",
    ] {
        for n in numbers_after(&squashed, prefix) {
            if n != 0 || prefix.starts_with("LabSpec") || prefix == "lab_subnet(" {
                found.push(format!("{prefix}{n}"));
            }
        }
    }
    found
}

/// The names passed to `subnet_of("...")` in `code`.
fn names(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("subnet_of(") {
        rest = rest[i + "subnet_of(".len()..].trim_start();
        if let Some(quoted) = rest.strip_prefix('"')
            && let Some(end) = quoted.find('"')
        {
            out.push(quoted[..end].to_string());
        }
    }
    out
}

/// Who may take the entry `name`: the file the name's first part says (`x::` is
/// `tests/x.rs`, `lab/x::` is `lab/tests/x.rs`), the benchmark, the demo.
fn owner(name: &str) -> String {
    match name {
        "primgr-bench" | "primgr-bench --short" => "bench/src/opts.rs".into(),
        "primgr-lab up" => "lab/src/main.rs".into(),
        _ => {
            let file = name.split("::").next().unwrap_or_default();
            match file.strip_prefix("lab/") {
                Some(f) => format!("lab/tests/{f}.rs"),
                None => format!("tests/{file}.rs"),
            }
        }
    }
}

#[test]
fn every_test_takes_its_subnet_from_the_table_and_no_two_share_one() {
    let table: BTreeMap<&str, u8> = SUBNETS.iter().copied().collect();
    assert_eq!(table.len(), SUBNETS.len(), "a name twice in SUBNETS");
    let mut files = Vec::new();
    for dir in ["tests", "lab/tests", "bench/src"] {
        sources(&Path::new(ROOT).join(dir), &mut files);
    }
    files.push(Path::new(ROOT).join("lab/src/main.rs"));
    files.sort();

    let mut taken: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(ROOT)
            .unwrap_or(path)
            .display()
            .to_string();
        if rel == "tests/subnets.rs" {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("source");
        let code = code(&text).join("\n");
        for name in names(&code) {
            taken.entry(name).or_default().push(rel.clone());
        }
        let found = literals(&code);
        match LITERALS.iter().find(|(file, _, _)| *file == rel) {
            Some((_, prefix, name)) => {
                let want = table.get(name).copied();
                let squashed: String = code.split_whitespace().collect();
                let prefix: String = prefix.split_whitespace().collect();
                let got = numbers_after(&squashed, &prefix);
                if got.len() != 1 || want.map(u32::from) != got.first().copied() {
                    problems.push(format!(
                        "{rel}: its literal {got:?} after {prefix:?} is not SUBNETS' {name:?} \
                         ({want:?})"
                    ));
                }
                let others: Vec<&String> = found
                    .iter()
                    .filter(|f| !f.starts_with(prefix.as_str()))
                    .collect();
                if !others.is_empty() {
                    problems.push(format!("{rel}: subnet literals {others:?}"));
                }
                taken.entry(name.to_string()).or_default().push(rel.clone());
            }
            None if !found.is_empty() => {
                problems.push(format!("{rel}: subnet literals {found:?}"));
            }
            None => {}
        }
    }
    for (name, files) in &taken {
        if !table.contains_key(name.as_str()) {
            problems.push(format!(
                "{files:?} take {name:?}, which SUBNETS has no entry for"
            ));
        }
        let own = owner(name);
        if files.iter().any(|f| *f != own) {
            problems.push(format!(
                "{name:?} is taken by {files:?}, not by its owner {own}"
            ));
        }
        // A test's name must be a test of its file (a renamed test keeps no stale entry).
        if let Some((_, function)) = name.split_once("::") {
            let text = std::fs::read_to_string(Path::new(ROOT).join(&own)).unwrap_or_default();
            if !text.contains(&format!("fn {function}(")) {
                problems.push(format!("{own} has no test fn {function}"));
            }
        }
    }
    for (name, subnet) in SUBNETS {
        if !taken.contains_key(*name) {
            problems.push(format!(
                "SUBNETS' {name:?} ({subnet}) is taken by no source"
            ));
        }
    }
    println!(
        "{} sources read; {} names taken from {} SUBNETS entries; {} problems",
        files.len(),
        taken.len(),
        SUBNETS.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The scanner finds what it must refuse.
#[test]
fn the_scanner_sees_literals() {
    for (code, want) in [
        ("Lab::build(LabSpec::standard(41))", "LabSpec::standard(41"),
        ("LabSpec::new(\n    52,\n vec![])", "LabSpec::new(52"),
        (
            "let ip = Ipv4Addr::new(127, 0, 92, 1);",
            "Ipv4Addr::new(127,0,92",
        ),
        ("format!(\"host=127.0.61.10\")", "127.0.61"),
        ("const SUBNET: u8 = 50;", "constSUBNET:u8=50"),
        ("lab_subnet(112)", "lab_subnet(112"),
        ("const SUBNET_FENCE: u8 = 152;", "constSUBNET_FENCE:u8=152"),
    ] {
        let found = literals(code);
        assert!(found.iter().any(|f| f == want), "{code}: {found:?}");
    }
    for code in [
        "Ipv4Addr::new(127, 0, 0, 1)",
        "\"127.0.0.1:0\"",
        "Ipv4Addr::new(127, 0, lab.subnet(), 99)",
        "LabSpec::standard(subnet_of(\"cluster::x\"))",
    ] {
        assert!(literals(code).is_empty(), "{code}: {:?}", literals(code));
    }
    println!("7 literals found, 4 non-literals passed");
}

//! The house rules of `src/`, checked: every module (a file, or a directory whose every file
//! has one) has a `//!` header and a line in the layout of `src/lib.rs`, and imports flow one
//! way, downwards in that list (a module uses only modules listed below it), so a newcomer can
//! find each concern's files from the layout and no two modules depend on each other.

use std::collections::BTreeSet;
use std::path::Path;

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

/// The modules named by the layout lines of `src/lib.rs` (`//! - [`name`]: ...`), in order.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).expect("src/lib.rs");
    let mut order = Vec::new();
    for line in lib.lines().filter(|l| l.starts_with("//! - [`")) {
        // A line may name several modules, each as `- [`name`]:` or `; [`name`]:`.
        for part in line.split(['-', ';']).skip(1) {
            let part = part.trim_start();
            if let Some(name) = part.strip_prefix("[`").and_then(|p| p.split_once("`]:")) {
                order.push(name.0.to_string());
            }
        }
    }
    order
}

/// The `crate::<module>` names a source file refers to.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + 7..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a, b::c, self}`
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out
}

/// The source files of module `name`: `src/<name>.rs`, or every `.rs` file of `src/<name>/`.
fn files_of(name: &str) -> Vec<std::path::PathBuf> {
    let file = Path::new(SRC).join(format!("{name}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut files: Vec<_> = std::fs::read_dir(Path::new(SRC).join(name))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    files.sort();
    files
}

#[test]
fn every_module_has_a_header_and_a_place_in_the_layout() {
    let order = layout();
    let mut modules = Vec::new();
    for entry in std::fs::read_dir(SRC).expect("src/") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let is_module = path.is_dir() || path.extension().is_some_and(|e| e == "rs");
        if !is_module || name == "lib" || name == "main" {
            continue;
        }
        for file in files_of(&name) {
            let text = std::fs::read_to_string(&file).expect("source");
            assert!(
                text.starts_with("//! "),
                "{} has no //! header",
                file.display()
            );
        }
        assert!(
            order.contains(&name),
            "src/{name}.rs is not in the layout of src/lib.rs"
        );
        modules.push(name);
    }
    for name in &order {
        assert!(
            modules.contains(name),
            "the layout names {name}, which has no file"
        );
    }
    println!(
        "{} modules, each with a header and a layout line",
        modules.len()
    );
}

#[test]
fn imports_flow_downwards_in_the_layout() {
    let order = layout();
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut edges = 0;
    for (i, module) in order.iter().enumerate() {
        for path in files_of(module) {
            let text = std::fs::read_to_string(&path).expect("source");
            // Only the module's own code (its tests may use anything; docs may name any module).
            let code: String = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for used in uses(&code) {
                let Some(j) = rank(&used) else { continue };
                if j == i {
                    continue;
                }
                assert!(
                    j > i,
                    "{} uses crate::{used}, which the layout lists above it",
                    path.display()
                );
                edges += 1;
            }
        }
    }
    println!("{edges} crate-internal dependencies, every one downwards");
}

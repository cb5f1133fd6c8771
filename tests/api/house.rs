//! The crate's arrows point one way: every `crate::` path in `src/` names a module on a lower floor
//! than its own, as the table in `src/lib.rs` lays them out, and every module has a floor.

use std::{collections::BTreeMap, path::Path};

/// The floors of the `//! | N | `modules` | … |` rows of `src/lib.rs`.
fn floors(lib: &str) -> BTreeMap<String, u32> {
    let mut floors = BTreeMap::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | ") else {
            continue;
        };
        let mut cells = row.split(" | ");
        let Some(floor) = cells.next().and_then(|c| c.trim().parse::<u32>().ok()) else {
            continue;
        };
        for name in cells.next().unwrap_or_default().split(',') {
            floors.insert(name.trim().trim_matches('`').to_owned(), floor);
        }
    }
    floors
}

/// The top-level modules a source file names through `crate::`, grouped imports included.
fn uses(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = code[at + "crate::".len()..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let (mut depth, mut expect) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect = true,
                    c if expect && depth == 0 && !c.is_whitespace() => {
                        found.push(ident(&group[i..]));
                        expect = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(rest));
        }
    }
    found
}

/// `src/answers/reader.rs` → `answers`; `src/config.rs` → `config`.
fn module_of(path: &Path, src: &Path) -> String {
    let relative = path.strip_prefix(src).expect("under src/");
    let first = relative.components().next().expect("a path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

fn sources(dir: &Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn no_module_reaches_up_into_one_that_uses_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let floors = floors(&std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    assert!(
        floors.len() > 10,
        "the floors table of src/lib.rs: {floors:?}"
    );
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&floor) = floors.get(&module) else {
            wrong.push(format!("{module} has no floor in src/lib.rs"));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("a source file");
        for used in uses(&text) {
            if used == module {
                continue;
            }
            match floors.get(&used) {
                Some(&below) if below < floor => {}
                Some(&other) => wrong.push(format!(
                    "{} (floor {floor}) uses {used} (floor {other})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{} uses {used}, which has no floor",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point back:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn grouped_imports_are_read_name_by_name() {
    let names = uses("use crate::{a::{B, c}, d, e::F};\nlet x = crate::g::h(); // crate::ignored");
    assert_eq!(names, ["a", "d", "e", "g"]);
}

//! The seed corpus under `tests/corpus/`, shared by the property and bound tests.

#![allow(dead_code)] // Each test binary uses part of it.

use std::path::PathBuf;

/// One corpus file: its name (without directory) and its bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name, e.g. `hostile-4gib-payload.b64`.
    pub name: String,
    /// Contents.
    pub bytes: Vec<u8>,
}

impl Seed {
    /// The contents as text (every seed file is UTF-8).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("corpus files are UTF-8")
    }

    /// The contents as text without the trailing newline an editor may add.
    pub fn trimmed(&self) -> &str {
        self.text().trim_end()
    }
}

/// Every file of `tests/corpus/<target>/`, sorted by name; panics on an empty or missing
/// directory, so a mistyped target cannot make a test vacuous.
pub fn corpus(target: &str) -> Vec<Seed> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut seeds: Vec<Seed> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            Seed {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes: std::fs::read(&path).expect("corpus file"),
            }
        })
        .collect();
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// The seeds of `target` whose names start with `prefix`; panics when there are none.
pub fn seeds(target: &str, prefix: &str) -> Vec<Seed> {
    let found: Vec<Seed> = corpus(target)
        .into_iter()
        .filter(|s| s.name.starts_with(prefix))
        .collect();
    assert!(!found.is_empty(), "no {prefix}* seeds in {target}");
    found
}

/// The lines of the threshold seed file `name`, without blank ones.
pub fn lines(target: &str, name: &str) -> Vec<String> {
    let seed = corpus(target)
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in {target}"));
    seed.text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

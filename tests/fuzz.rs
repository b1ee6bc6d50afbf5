//! No input makes the loader panic: random text, and stack.toml files
//! mutated byte by byte, line by line and value by value.

mod common;
use proptest::prelude::*;
use std::path::Path;

fn load(src: &str) {
    let _ = stackctl::model::load_str(
        src,
        Path::new("stack.toml"),
        Path::new("/nonexistent"),
        None,
        true,
    );
    let _ = stackctl::model::load_str(
        src,
        Path::new("stack.toml"),
        Path::new("/nonexistent"),
        Some("staging"),
        false,
    );
}

fn repo_stack() -> String {
    std::fs::read_to_string(common::repo().join("stack.toml")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn random_text(s in "\\PC{0,400}") {
        load(&s);
    }

    #[test]
    fn random_tomlish_text(s in "(\\[[a-z._-]{1,20}\\]\n|[a-z_]{1,12} = (\"[^\"\n]{0,12}\"|[0-9.-]{1,6}|true|\\[\\]|\\{ ?\\})\n){0,30}") {
        load(&s);
    }

    #[test]
    fn mutated_bytes(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut b = repo_stack().into_bytes();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        load(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn deleted_and_duplicated_lines(ops in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..10)) {
        let mut lines: Vec<String> = repo_stack().lines().map(str::to_string).collect();
        for (i, dup) in ops {
            let at = i.index(lines.len());
            if dup { let l = lines[at].clone(); lines.insert(at, l); } else { lines.remove(at); }
        }
        load(&lines.join("\n"));
    }

    #[test]
    fn replaced_values(ops in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![
        "\"\"", "0", "-1", "65536", "1e309", "\"0s\"", "\"99999999999999999999h\"", "\"0M\"", "[]", "{}", "true",
        "\"../../..\"", "[\"backend\", \"backend\"]", "\"\\u0000\"", "\"ünïcödé\"", "99999999999999999999",
    ])), 1..6)) {
        let mut lines: Vec<String> = repo_stack().lines().map(str::to_string).collect();
        for (i, v) in ops {
            let at = i.index(lines.len());
            if let Some(eq) = lines[at].find(" = ") {
                lines[at] = format!("{} = {v}", &lines[at][..eq]);
            }
        }
        load(&lines.join("\n"));
    }
}

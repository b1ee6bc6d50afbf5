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

/// The inputs mutated: the repo's stack, the components example (every
/// kind of source, files, published ports, presets), and the repo's stack
/// with tables that change infrastructure containers.
fn source(which: usize) -> String {
    let read = |p: &str| std::fs::read_to_string(common::repo().join(p)).unwrap();
    match which % 3 {
        0 => read("stack.toml"),
        1 => read("examples/components/stack.toml"),
        _ => format!(
            "{}\n[components.nginx]\nports = [\"*:8080:80\", \"127.0.0.1:8443:443\"]\nresources = {{ memory = \"128M\", cpus = 0.5 }}\n\n[components.redis]\nimage = \"redis:7.4\"\nenv = {{ TZ = \"UTC\" }}\nhealthcheck = {{ shell = \"redis-cli ping\", interval = \"5s\" }}\nlabels = {{ team = \"data\" }}\n",
            read("stack.toml")
        ),
    }
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
    fn mutated_bytes(which in 0..3usize, edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut b = source(which).into_bytes();
        for (i, v) in edits {
            let at = i.index(b.len());
            b[at] = v;
        }
        load(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn deleted_and_duplicated_lines(which in 0..3usize, ops in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..10)) {
        let mut lines: Vec<String> = source(which).lines().map(str::to_string).collect();
        for (i, dup) in ops {
            let at = i.index(lines.len());
            if dup { let l = lines[at].clone(); lines.insert(at, l); } else { lines.remove(at); }
        }
        load(&lines.join("\n"));
    }

    #[test]
    fn replaced_values(which in 0..3usize, ops in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![
        "\"\"", "0", "-1", "65536", "1e309", "\"0s\"", "\"99999999999999999999h\"", "\"0M\"", "[]", "{}", "true",
        "\"../../..\"", "[\"backend\", \"backend\"]", "\"\\u0000\"", "\"ünïcödé\"", "99999999999999999999",
    ])), 1..6)) {
        let mut lines: Vec<String> = source(which).lines().map(str::to_string).collect();
        for (i, v) in ops {
            let at = i.index(lines.len());
            if let Some(eq) = lines[at].find(" = ") {
                lines[at] = format!("{} = {v}", &lines[at][..eq]);
            }
        }
        load(&lines.join("\n"));
    }
}

/// The mutations start from valid stacks, so they reach every check.
#[test]
fn every_source_is_a_valid_stack() {
    for which in 0..3 {
        let root = if which == 1 {
            common::repo().join("examples/components")
        } else {
            common::repo()
        };
        let stack =
            stackctl::model::load_str(&source(which), Path::new("stack.toml"), &root, None, true)
                .unwrap_or_else(|e| panic!("source {which}: {e}"));
        assert!(!stack.components.is_empty(), "source {which}");
    }
}

//! What each infrastructure image is made of, and the hash that names it.
//!
//! The recipe files live in the repository's top-level `images/` directory and
//! are compiled into the binary, so the hash is a pure function of the binary.

use sha2::{Digest, Sha256};

use super::InfraKind;

/// The Debian release every image is built from.
pub const SUITE: &str = "bookworm";
/// The debootstrap variant: the smallest set of packages apt needs.
pub const VARIANT: &str = "minbase";

/// One file of the docker build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    pub name: &'static str,
    pub mode: u32,
    pub contents: &'static [u8],
}

/// Everything an image is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub kind: InfraKind,
    pub suite: &'static str,
    pub variant: &'static str,
    /// Debian packages installed on top of minbase (their dependencies follow).
    pub packages: Vec<String>,
    /// Paths (relative to `/`, simple `*` globs) removed from the rootfs before import.
    pub prune: Vec<String>,
    /// The build context: a `Dockerfile` first, then the files it copies.
    pub files: Vec<ContextFile>,
}

const COMMON_PRUNE: &str = include_str!("../../images/prune");

/// The lines of a list file, without blanks and `#` comments.
pub fn list_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl Recipe {
    pub fn of(kind: InfraKind) -> Recipe {
        let (packages, prune, files): (&str, &str, Vec<ContextFile>) = match kind {
            InfraKind::Postgres => (
                include_str!("../../images/postgres/packages"),
                include_str!("../../images/postgres/prune"),
                vec![
                    dockerfile(include_bytes!("../../images/postgres/Dockerfile")),
                    entrypoint(include_bytes!("../../images/postgres/docker-entrypoint.sh")),
                ],
            ),
            InfraKind::Redis => (
                include_str!("../../images/redis/packages"),
                include_str!("../../images/redis/prune"),
                vec![
                    dockerfile(include_bytes!("../../images/redis/Dockerfile")),
                    entrypoint(include_bytes!("../../images/redis/docker-entrypoint.sh")),
                ],
            ),
            InfraKind::Nginx => (
                include_str!("../../images/nginx/packages"),
                include_str!("../../images/nginx/prune"),
                vec![dockerfile(include_bytes!("../../images/nginx/Dockerfile"))],
            ),
            InfraKind::Prometheus => (
                include_str!("../../images/prometheus/packages"),
                include_str!("../../images/prometheus/prune"),
                vec![dockerfile(include_bytes!(
                    "../../images/prometheus/Dockerfile"
                ))],
            ),
        };
        let mut prune_all = list_lines(COMMON_PRUNE);
        prune_all.extend(list_lines(prune));
        Recipe {
            kind,
            suite: SUITE,
            variant: VARIANT,
            packages: list_lines(packages),
            prune: prune_all,
            files,
        }
    }

    /// The packages, sorted and deduplicated: the order in the file does not matter.
    pub fn package_set(&self) -> Vec<String> {
        let mut p = self.packages.clone();
        p.sort();
        p.dedup();
        p
    }

    /// sha256 of what the debootstrapped rootfs depends on: suite, variant,
    /// package set and pruned paths. Names the cached tarball and base image.
    pub fn rootfs_hash(&self) -> String {
        let mut h = Sha256::new();
        self.hash_rootfs_part(&mut h);
        hex::encode(h.finalize())
    }

    fn hash_rootfs_part(&self, h: &mut Sha256) {
        h.update(b"stackctl-rootfs v1\n");
        h.update(format!("suite {}\nvariant {}\n", self.suite, self.variant));
        // The update and security pockets are applied on top of the release.
        h.update(format!(
            "upgrade {}\n",
            super::rootfs::UPDATE_POCKETS.join(",")
        ));
        for p in self.package_set() {
            h.update(format!("package {p}\n"));
        }
        for p in &self.prune {
            h.update(format!("prune {p}\n"));
        }
        for (file, contents) in super::rootfs::HOST_FILES {
            h.update(format!("host-file {file} {contents:?}\n"));
        }
    }

    /// sha256 of the whole recipe: the rootfs part plus every context file
    /// (name, mode, length, bytes). Stored in the `io.stackctl.recipe` label.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"stackctl-image-recipe v1\n");
        h.update(format!("kind {}\n", self.kind.name()));
        self.hash_rootfs_part(&mut h);
        for f in &self.files {
            h.update(format!(
                "file {} {:o} {}\n",
                f.name,
                f.mode,
                f.contents.len()
            ));
            h.update(f.contents);
        }
        hex::encode(h.finalize())
    }
}

fn dockerfile(contents: &'static [u8]) -> ContextFile {
    ContextFile {
        name: "Dockerfile",
        mode: 0o644,
        contents,
    }
}

fn entrypoint(contents: &'static [u8]) -> ContextFile {
    ContextFile {
        name: "docker-entrypoint.sh",
        mode: 0o755,
        contents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_hex() {
        for kind in InfraKind::all() {
            let a = Recipe::of(kind).hash();
            let b = Recipe::of(kind).hash();
            assert_eq!(a, b);
            assert_eq!(a.len(), 64);
            assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn every_kind_has_its_own_hash() {
        let mut hashes: Vec<String> = InfraKind::all()
            .iter()
            .map(|k| Recipe::of(*k).hash())
            .collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), 4);
    }

    #[test]
    fn package_list_changes_both_hashes() {
        let base = Recipe::of(InfraKind::Redis);
        let mut more = base.clone();
        more.packages.push("procps".into());
        assert_ne!(base.hash(), more.hash());
        assert_ne!(base.rootfs_hash(), more.rootfs_hash());
    }

    #[test]
    fn package_order_and_duplicates_do_not_matter() {
        let base = Recipe::of(InfraKind::Postgres);
        let mut shuffled = base.clone();
        shuffled.packages.reverse();
        shuffled.packages.push(base.packages[0].clone());
        assert_eq!(base.hash(), shuffled.hash());
        assert_eq!(base.rootfs_hash(), shuffled.rootfs_hash());
    }

    #[test]
    fn entrypoint_change_keeps_the_rootfs() {
        let base = Recipe::of(InfraKind::Postgres);
        let mut edited = base.clone();
        let f = edited
            .files
            .iter_mut()
            .find(|f| f.name == "docker-entrypoint.sh")
            .expect("postgres has an entrypoint");
        f.contents = b"#!/bin/sh\nexec \"$@\"\n";
        assert_ne!(base.hash(), edited.hash());
        assert_eq!(base.rootfs_hash(), edited.rootfs_hash());
    }

    #[test]
    fn file_mode_and_prune_are_part_of_the_recipe() {
        let base = Recipe::of(InfraKind::Redis);
        let mut m = base.clone();
        m.files[1].mode = 0o644;
        assert_ne!(base.hash(), m.hash());
        let mut p = base.clone();
        p.prune.push("usr/share/zoneinfo".into());
        assert_ne!(base.hash(), p.hash());
        assert_ne!(base.rootfs_hash(), p.rootfs_hash());
    }

    #[test]
    fn list_lines_skips_comments_and_blanks() {
        assert_eq!(
            list_lines("# c\n\n a \nb\n  # d\n"),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn recipes_have_the_expected_packages() {
        let pg = Recipe::of(InfraKind::Postgres).package_set();
        assert!(pg.contains(&"postgresql-15".to_string()));
        assert!(pg.contains(&"postgresql-client-15".to_string()));
        let r = Recipe::of(InfraKind::Redis).package_set();
        assert!(r.contains(&"redis-server".to_string()));
        assert!(r.contains(&"redis-tools".to_string()));
        for k in InfraKind::all() {
            let rec = Recipe::of(k);
            assert_eq!(rec.files[0].name, "Dockerfile");
            let df = std::str::from_utf8(rec.files[0].contents).unwrap();
            assert!(
                df.contains("FROM ${BASE}"),
                "{k:?} Dockerfile builds FROM the rootfs"
            );
        }
    }
}

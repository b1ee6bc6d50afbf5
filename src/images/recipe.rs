//! What each image is made of, and the hashes that name it.
//!
//! A recipe is data: a tag, Debian packages, paths pruned from the rootfs and
//! the files of a docker build context (a `Dockerfile` first). The built-in
//! recipes are the directories of the repository's top-level `images/`, compiled
//! into the binary (so their hashes are a pure function of the binary); a
//! component's own package list becomes a recipe with [`Recipe::packages`].
//!
//! Every image is the shared [`Base`] rootfs of its suite plus its packages:
//! [`Recipe::rootfs_hash`] names that layer, [`Recipe::hash`] the final image.

use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

/// The Debian release every image is built from.
pub const SUITE: &str = "bookworm";
/// The debootstrap variant of the base: the smallest set of packages apt needs.
pub const VARIANT: &str = "minbase";
/// What every image gets on top of minbase: TLS roots, and an HTTP client for
/// health checks.
pub const BASE_PACKAGES: [&str; 2] = ["ca-certificates", "wget"];

static BUILTIN: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/images");

/// One file of the docker build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    pub name: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

impl ContextFile {
    pub fn new(name: impl Into<String>, mode: u32, contents: impl Into<Vec<u8>>) -> ContextFile {
        ContextFile {
            name: name.into(),
            mode,
            contents: contents.into(),
        }
    }
}

/// Everything an image is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// Short lower-case name (the `images/<name>/` directory of a built-in
    /// recipe); names its rootfs layer and cache files.
    pub name: String,
    /// The image reference it is tagged as (`stackctl/redis:7-bookworm`).
    pub tag: String,
    pub suite: String,
    /// Debian packages installed on the base (their dependencies follow).
    pub packages: Vec<String>,
    /// Paths (relative to `/`, `*` globs in the last component) removed from
    /// the image's layer: the common list, then the recipe's own.
    pub prune: Vec<String>,
    /// The build context: a `Dockerfile` first, then the files it copies.
    pub files: Vec<ContextFile>,
}

/// The shared root file system of a suite: debootstrap minbase plus
/// [`BASE_PACKAGES`], upgraded from the update and security pockets, pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub suite: String,
    pub variant: String,
    pub packages: Vec<String>,
    pub prune: Vec<String>,
}

impl Base {
    pub fn of(suite: &str) -> Base {
        Base {
            suite: suite.to_string(),
            variant: VARIANT.to_string(),
            packages: BASE_PACKAGES.iter().map(|s| s.to_string()).collect(),
            prune: common_prune(),
        }
    }

    /// sha256 of what the base rootfs depends on. Names its cache directory
    /// and the `stackctl/rootfs:<suite>-<hash>` image.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        self.hash_into(&mut h);
        hex::encode(h.finalize())
    }

    fn hash_into(&self, h: &mut Sha256) {
        h.update(b"stackctl-base-rootfs v2\n");
        h.update(format!("suite {}\nvariant {}\n", self.suite, self.variant));
        // The update and security pockets are applied on top of the release.
        h.update(format!(
            "upgrade {}\n",
            super::rootfs::UPDATE_POCKETS.join(",")
        ));
        for p in sorted(&self.packages) {
            h.update(format!("package {p}\n"));
        }
        for p in &self.prune {
            h.update(format!("prune {p}\n"));
        }
        for (file, contents) in super::rootfs::HOST_FILES {
            h.update(format!("host-file {file} {contents:?}\n"));
        }
    }
}

fn common_prune() -> Vec<String> {
    list_lines(
        BUILTIN
            .get_file("prune")
            .and_then(|f| f.contents_utf8())
            .unwrap_or(""),
    )
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut p = v.to_vec();
    p.sort();
    p.dedup();
    p
}

/// The lines of a list file, without blanks and `#` comments.
pub fn list_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The tags of the built-in recipes, in `images/` directory order.
pub fn builtin_tags() -> Vec<&'static str> {
    builtin_dirs()
        .filter_map(|d| d.get_file(d.path().join("tag")))
        .filter_map(|f| f.contents_utf8())
        .map(str::trim)
        .collect()
}

fn builtin_dirs() -> impl Iterator<Item = &'static Dir<'static>> {
    let mut dirs: Vec<&'static Dir<'static>> = BUILTIN.dirs().collect();
    dirs.sort_by_key(|d| d.path());
    dirs.into_iter()
}

/// An image reference without a `docker.io/` (or `docker.io/library/`) prefix.
fn normalise(tag: &str) -> &str {
    let t = tag.strip_prefix("docker.io/").unwrap_or(tag);
    t.strip_prefix("library/").unwrap_or(t)
}

impl Recipe {
    /// Every built-in recipe (`images/<name>/`).
    pub fn builtins() -> Vec<Recipe> {
        builtin_dirs().filter_map(Recipe::from_dir).collect()
    }

    /// The built-in recipe tagged `tag` (a `docker.io/` prefix is ignored).
    pub fn builtin(tag: &str) -> Option<Recipe> {
        let tag = normalise(tag);
        Recipe::builtins().into_iter().find(|r| r.tag == tag)
    }

    /// The built-in recipe named `name` (its `images/<name>/` directory).
    pub fn named(name: &str) -> Option<Recipe> {
        Recipe::builtins().into_iter().find(|r| r.name == name)
    }

    /// The recipe of an image a stack asks for: the built-in recipe tagged
    /// `tag` when `packages` is empty, else a recipe of those packages on the
    /// shared base, tagged `tag`.
    pub fn resolve(tag: &str, packages: &[String]) -> anyhow::Result<Recipe> {
        if packages.is_empty() {
            return Recipe::builtin(tag).ok_or_else(|| {
                anyhow::anyhow!(
                    "no built-in Debian recipe builds {tag}; the built-in ones are {}, or list the image's Debian packages",
                    builtin_tags().join(", ")
                )
            });
        }
        if Recipe::builtin(tag).is_some() {
            anyhow::bail!(
                "{tag} is the tag of a built-in recipe: an image of other packages needs a tag of its own (e.g. stackctl/NAME:bookworm)"
            );
        }
        Ok(Recipe::packages(tag, packages))
    }

    /// A component's own package list: the shared base plus `packages`, with a
    /// minimal Dockerfile (no entrypoint: user and command come from the
    /// container's configuration).
    pub fn packages(tag: &str, packages: &[String]) -> Recipe {
        let tag = normalise(tag).to_string();
        let repo = tag.rsplit_once(':').map(|(r, _)| r).unwrap_or(&tag);
        let last = repo.rsplit('/').next().unwrap_or(repo);
        let mut name: String = last
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        if name.is_empty() {
            name = "image".into();
        }
        // Another tag with the same last path component gets another name.
        let mut h = Sha256::new();
        h.update(tag.as_bytes());
        let name = format!("pkg-{name}-{}", &hex::encode(h.finalize())[..8]);
        let dockerfile = format!(
            "# {tag}: Debian {SUITE} packages on stackctl's shared base: {}.\nARG BASE\nFROM ${{BASE}}\nENV LANG=C.UTF-8\n",
            sorted(packages).join(", ")
        );
        Recipe {
            name,
            tag,
            suite: SUITE.to_string(),
            packages: packages
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            prune: common_prune(),
            files: vec![ContextFile::new("Dockerfile", 0o644, dockerfile)],
        }
    }

    fn from_dir(dir: &'static Dir<'static>) -> Option<Recipe> {
        let name = dir.path().file_name()?.to_str()?.to_string();
        let text = |file: &str| {
            dir.get_file(dir.path().join(file))
                .and_then(|f| f.contents_utf8())
        };
        let tag = text("tag")?.trim().to_string();
        let mut prune = common_prune();
        prune.extend(list_lines(text("prune").unwrap_or("")));
        let mut files: Vec<ContextFile> = dir
            .files()
            .filter_map(|f| {
                let file = f.path().file_name()?.to_str()?;
                if matches!(file, "tag" | "packages" | "prune") {
                    return None;
                }
                let mode = if file.ends_with(".sh") { 0o755 } else { 0o644 };
                Some(ContextFile::new(file, mode, f.contents()))
            })
            .collect();
        files.sort_by(|a, b| {
            (a.name != "Dockerfile", &a.name).cmp(&(b.name != "Dockerfile", &b.name))
        });
        Some(Recipe {
            name,
            tag,
            suite: SUITE.to_string(),
            packages: list_lines(text("packages").unwrap_or("")),
            prune,
            files,
        })
    }

    /// The shared base this recipe's packages go on.
    pub fn base(&self) -> Base {
        Base::of(&self.suite)
    }

    /// The packages, sorted and deduplicated: the order in the file does not matter.
    pub fn package_set(&self) -> Vec<String> {
        sorted(&self.packages)
    }

    /// sha256 of what the image's rootfs layer depends on: the base, the
    /// package set and the pruned paths. Names its cache file and the
    /// `stackctl/rootfs:<name>-<hash>` image.
    pub fn rootfs_hash(&self) -> String {
        let mut h = Sha256::new();
        self.hash_rootfs_part(&mut h);
        hex::encode(h.finalize())
    }

    fn hash_rootfs_part(&self, h: &mut Sha256) {
        self.base().hash_into(h);
        h.update(b"stackctl-image-layer v2\n");
        for p in self.package_set() {
            h.update(format!("package {p}\n"));
        }
        for p in &self.prune {
            h.update(format!("prune {p}\n"));
        }
    }

    /// sha256 of the whole recipe: tag, the rootfs part and every context
    /// file (name, mode, length, bytes). Stored in the `io.stackctl.recipe` label.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"stackctl-image-recipe v2\n");
        h.update(format!("tag {}\n", self.tag));
        self.hash_rootfs_part(&mut h);
        for f in &self.files {
            h.update(format!(
                "file {} {:o} {}\n",
                f.name,
                f.mode,
                f.contents.len()
            ));
            h.update(&f.contents);
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str) -> Recipe {
        Recipe::named(name).unwrap_or_else(|| panic!("built-in recipe {name}"))
    }

    #[test]
    fn builtins_are_the_image_directories() {
        let tags = builtin_tags();
        for t in [
            "stackctl/postgres:15-bookworm",
            "stackctl/redis:7-bookworm",
            "stackctl/nginx:1.22-bookworm",
            "stackctl/prometheus:2-bookworm",
            "stackctl/node-exporter:bookworm",
            "stackctl/postgres-exporter:bookworm",
            "stackctl/redis-exporter:bookworm",
            "stackctl/nginx-exporter:bookworm",
            "stackctl/alertmanager:bookworm",
            "stackctl/pgbouncer:bookworm",
            "stackctl/docker-api-proxy:bookworm",
        ] {
            assert!(tags.contains(&t), "{t} in {tags:?}");
            let r = Recipe::builtin(t).unwrap();
            assert_eq!(r.tag, t);
            assert_eq!(Recipe::builtin(&format!("docker.io/{t}")), Some(r.clone()));
            assert!(!r.packages.is_empty(), "{t} has packages");
            assert_eq!(r.files[0].name, "Dockerfile");
            let df = std::str::from_utf8(&r.files[0].contents).unwrap();
            assert!(df.contains("FROM ${BASE}"), "{t} builds FROM the rootfs");
            assert!(
                df.contains("--version") || df.contains("-version") || df.contains(" -v;"),
                "{t} smoke-checks its binary"
            );
        }
        assert_eq!(tags.len(), Recipe::builtins().len());
        assert_eq!(Recipe::builtin("postgres:15"), None);
        assert_eq!(Recipe::builtin("stackctl/postgres:16-bookworm"), None);
    }

    #[test]
    fn hash_is_stable_and_hex() {
        for r in Recipe::builtins() {
            let a = r.hash();
            assert_eq!(a, Recipe::builtin(&r.tag).unwrap().hash());
            assert_eq!(a.len(), 64);
            assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn every_recipe_has_its_own_hash_and_layer() {
        let all = Recipe::builtins();
        let mut hashes: Vec<String> = all.iter().map(Recipe::hash).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), all.len());
        let mut names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }

    #[test]
    fn all_share_one_base() {
        let bases: Vec<String> = Recipe::builtins().iter().map(|r| r.base().hash()).collect();
        assert!(bases.windows(2).all(|w| w[0] == w[1]));
        let base = Base::of(SUITE);
        assert!(base.packages.contains(&"ca-certificates".to_string()));
        assert!(base.packages.contains(&"wget".to_string()));
    }

    #[test]
    fn package_list_changes_both_hashes() {
        let base = builtin("redis");
        let mut more = base.clone();
        more.packages.push("procps".into());
        assert_ne!(base.hash(), more.hash());
        assert_ne!(base.rootfs_hash(), more.rootfs_hash());
        assert_eq!(base.base().hash(), more.base().hash());
    }

    #[test]
    fn package_order_and_duplicates_do_not_matter() {
        let base = builtin("postgres");
        let mut shuffled = base.clone();
        shuffled.packages.reverse();
        shuffled.packages.push(base.packages[0].clone());
        assert_eq!(base.hash(), shuffled.hash());
        assert_eq!(base.rootfs_hash(), shuffled.rootfs_hash());
    }

    #[test]
    fn entrypoint_change_keeps_the_rootfs() {
        let base = builtin("postgres");
        let mut edited = base.clone();
        let f = edited
            .files
            .iter_mut()
            .find(|f| f.name == "docker-entrypoint.sh")
            .expect("postgres has an entrypoint");
        assert_eq!(f.mode, 0o755);
        f.contents = b"#!/bin/sh\nexec \"$@\"\n".to_vec();
        assert_ne!(base.hash(), edited.hash());
        assert_eq!(base.rootfs_hash(), edited.rootfs_hash());
    }

    #[test]
    fn prune_change_changes_the_rootfs() {
        let base = builtin("nginx");
        let mut p = base.clone();
        p.prune.push("usr/share/nginx".into());
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
        let pg = builtin("postgres").package_set();
        assert!(pg.contains(&"postgresql-15".to_string()));
        assert!(pg.contains(&"postgresql-client-15".to_string()));
        let r = builtin("redis").package_set();
        assert!(r.contains(&"redis-server".to_string()));
        assert!(r.contains(&"redis-tools".to_string()));
        assert_eq!(
            builtin("alertmanager").package_set(),
            vec!["prometheus-alertmanager".to_string()]
        );
        assert_eq!(
            builtin("pgbouncer").package_set(),
            vec!["pgbouncer".to_string()]
        );
    }

    #[test]
    fn resolve_builtin_packages_or_error() {
        let r = Recipe::resolve("stackctl/redis:7-bookworm", &[]).unwrap();
        assert_eq!(r.name, "redis");
        let pkgs = vec!["python3".to_string(), "python3-requests".to_string()];
        let w = Recipe::resolve("acme/worker:1", &pkgs).unwrap();
        assert_eq!(w.tag, "acme/worker:1");
        assert_eq!(w.package_set(), pkgs);
        assert!(w.name.starts_with("pkg-worker-"), "{}", w.name);
        let df = std::str::from_utf8(&w.files[0].contents).unwrap();
        assert!(
            df.contains("FROM ${BASE}") && df.contains("ENV LANG=C.UTF-8"),
            "{df}"
        );
        assert!(!df.contains("ENTRYPOINT") && !df.contains("USER"), "{df}");
        assert_eq!(w.base(), r.base(), "the same shared base");
        let e = Recipe::resolve("acme/worker:1", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("acme/worker:1") && e.contains("stackctl/redis:7-bookworm"),
            "{e}"
        );
        let e = Recipe::resolve("stackctl/redis:7-bookworm", &pkgs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("built-in"), "{e}");
        // Two tags with the same last component get their own layer names.
        let other = Recipe::packages("other/worker:1", &pkgs);
        assert_ne!(other.name, w.name);
        assert_ne!(other.hash(), w.hash());
        assert_eq!(other.rootfs_hash(), w.rootfs_hash());
    }
}

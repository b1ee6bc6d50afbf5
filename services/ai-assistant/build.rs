// The knowledge base is embedded with include_dir!: rebuild when a file in
// kb/ is added, removed or changed.
fn main() {
    println!("cargo:rerun-if-changed=kb");
    println!("cargo:rerun-if-changed=migrations");
}

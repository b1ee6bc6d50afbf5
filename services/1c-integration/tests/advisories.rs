//! RUSTSEC-2026-0194 is reachable from the SOAP and $metadata parsers:
//! every quick-xml in the lock file must be 0.41 or newer.

#[test]
fn quick_xml_is_at_least_0_41() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
        .expect("the workspace Cargo.lock");
    let mut versions = Vec::new();
    let mut in_quick_xml = false;
    for line in lock.lines() {
        if line.starts_with("[[package]]") {
            in_quick_xml = false;
        } else if line == "name = \"quick-xml\"" {
            in_quick_xml = true;
        } else if in_quick_xml {
            if let Some(v) = line.strip_prefix("version = \"") {
                versions.push(v.trim_end_matches('"').to_string());
                in_quick_xml = false;
            }
        }
    }
    assert!(!versions.is_empty(), "quick-xml not found in Cargo.lock");
    for v in &versions {
        let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert!(
            (major, minor) >= (0, 41),
            "quick-xml {v} in Cargo.lock is affected by RUSTSEC-2026-0194 (need >= 0.41)"
        );
    }
    println!("quick-xml in Cargo.lock: {versions:?}");
}

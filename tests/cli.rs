//! The commands of this issue through the real binary: config, architecture,
//! completions, validate on every shipped stack, global flags.

mod common;
use common::*;

fn run_repo(args: &[&str]) -> std::process::Output {
    bin().current_dir(repo()).args(args).output().unwrap()
}

#[test]
fn validate_passes_on_the_repo_stack_every_environment_and_every_example() {
    for args in [
        vec!["validate"],
        vec!["--env", "staging", "validate"],
        vec!["--env", "production", "validate"],
        vec!["-f", "examples/minimal/stack.toml", "validate"],
        vec!["-f", "examples/registry-images/stack.toml", "validate"],
        vec![
            "-f",
            "examples/registry-images/stack.toml",
            "-e",
            "production",
            "validate",
        ],
    ] {
        let o = run_repo(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("is valid"), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn quiet_prints_nothing_on_success_and_json_prints_a_report() {
    let o = run_repo(&["-q", "validate"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    let o = run_repo(&["--json", "validate"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["services"], 7);
}

#[test]
fn config_prints_the_resolved_stack_as_toml_and_json() {
    let o = run_repo(&["--env", "production", "config", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["environment"], "production");
    let gw = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api-gateway")
        .unwrap();
    assert_eq!(gw["replicas"], 2);
    assert_eq!(gw["resources"]["memory"], "512M");
    assert_eq!(gw["resources"]["reserve_memory"], "256M");
    // Dependencies come before dependents.
    let order: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
    assert!(
        pos("security") < pos("user-management") && pos("user-management") < pos("api-gateway"),
        "{order:?}"
    );
    // Implied secrets are listed too.
    let secrets: Vec<&str> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        secrets.contains(&"postgres-user-password") && secrets.contains(&"redis-acl"),
        "{secrets:?}"
    );

    let o = run_repo(&["config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t: toml::Table = toml::from_str(&stdout(&o)).expect("config prints TOML");
    assert_eq!(t["name"].as_str(), Some("ai-assistants-1c"));
}

#[test]
fn architecture_draws_text_mermaid_and_dot() {
    let o = run_repo(&["architecture"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "clients ──▶ nginx :80/:443 ──▶ api-gateway :3000",
        "backend (internal):",
        "postgres-user",
    ] {
        assert!(text.contains(needle), "{needle}\n{text}");
    }
    let m = stdout(&run_repo(&["architecture", "--format", "mermaid"]));
    assert!(
        m.starts_with("flowchart LR\n") && m.contains("api_gateway --> user_management"),
        "{m}"
    );
    let d = stdout(&run_repo(&["architecture", "--format", "dot"]));
    assert!(
        d.starts_with("digraph \"ai-assistants-1c\"")
            && d.contains("\"api-gateway\" -> \"security\";"),
        "{d}"
    );
    assert_eq!(d.matches('{').count(), d.matches('}').count());
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run_repo(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}");
        assert!(stdout(&o).contains("architecture"), "{shell}");
    }
    let o = run_repo(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_lists_only_working_commands() {
    let h = stdout(&run_repo(&["--help"]));
    for c in [
        "validate",
        "render",
        "config",
        "architecture",
        "completions",
    ] {
        assert!(h.contains(c), "{h}");
    }
}

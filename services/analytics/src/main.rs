//! The analytics binary: `analytics` serves, `analytics healthcheck` probes.

fn main() -> std::process::ExitCode {
    kit::main_with(analytics::DEFAULT_PORT, analytics::run)
}

//! The analytics binary: `analytics` serves, `analytics migrate` applies the
//! pending migrations and exits, `analytics healthcheck` probes.

fn main() -> std::process::ExitCode {
    if let Some(code) = kit::migrate::run_if_requested("analytics", &analytics::MIGRATOR) {
        return code;
    }
    kit::main_with(analytics::DEFAULT_PORT, analytics::run)
}

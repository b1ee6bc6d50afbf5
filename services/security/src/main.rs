//! `security` serves; `security migrate` applies the pending migrations and
//! exits; `security healthcheck` probes /health/ready.

fn main() -> std::process::ExitCode {
    if let Some(code) = kit::migrate::run_if_requested("security", &security::MIGRATOR) {
        return code;
    }
    kit::main_with(8004, security::run)
}

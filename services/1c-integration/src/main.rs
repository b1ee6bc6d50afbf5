//! `onec-integration`: the 1C:Enterprise integration service (port 8001).
//! `onec-integration migrate` applies the pending migrations and exits;
//! `onec-integration healthcheck` probes /health/ready and exits 0 or 1.

fn main() -> std::process::ExitCode {
    if let Some(code) =
        kit::migrate::run_if_requested("1c-integration", &onec_integration::service::MIGRATOR)
    {
        return code;
    }
    kit::main_with(8001, onec_integration::service::run)
}

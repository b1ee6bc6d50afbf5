//! `onec-integration`: the 1C:Enterprise integration service (port 8001).
//! `onec-integration healthcheck` probes /health/ready and exits 0 or 1.

fn main() -> std::process::ExitCode {
    kit::main_with(8001, onec_integration::service::run)
}

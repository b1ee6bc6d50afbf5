//! `onec-simulator`: a stand-in for a published 1C:Enterprise infobase
//! (standard OData v3 + the `exchange` SOAP web service).
//!
//! Env: PORT (default 8080), SIM_BASE (default `demo`), SIM_USER (default
//! `Администратор`), SIM_PASSWORD_FILE, SIM_STATE_FILE, RUST_LOG.
//! `onec-simulator healthcheck` probes `/health/ready` and exits 0 or 1.

fn main() -> std::process::ExitCode {
    kit::main_with(8080, onec_integration::simulator::run)
}

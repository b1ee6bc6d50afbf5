//! `user-management` serves; `user-management migrate` applies the pending
//! migrations and exits; `user-management healthcheck` probes /health/ready.

fn main() -> std::process::ExitCode {
    if let Some(code) =
        kit::migrate::run_if_requested("user-management", &user_management::MIGRATOR)
    {
        return code;
    }
    kit::main_with(8002, user_management::run)
}

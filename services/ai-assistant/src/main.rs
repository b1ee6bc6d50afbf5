//! `ai-assistant` serves; `ai-assistant migrate` applies the pending
//! migrations and exits; `ai-assistant healthcheck` probes /health/ready;
//! `ai-assistant check FILE…` runs the BSL checker on files and exits
//! (no server, no database: see `ai_assistant::bsl::cli`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("check") {
        return ai_assistant::bsl::cli::main(&args[2..]);
    }
    if let Some(code) =
        kit::migrate::run_if_requested(ai_assistant::SERVICE_NAME, &ai_assistant::MIGRATOR)
    {
        return code;
    }
    kit::main_with(ai_assistant::DEFAULT_PORT, ai_assistant::run)
}

//! `ai-assistant` serves; `ai-assistant migrate` applies the pending
//! migrations and exits; `ai-assistant healthcheck` probes /health/ready.

fn main() -> std::process::ExitCode {
    if let Some(code) =
        kit::migrate::run_if_requested(ai_assistant::SERVICE_NAME, &ai_assistant::MIGRATOR)
    {
        return code;
    }
    kit::main_with(ai_assistant::DEFAULT_PORT, ai_assistant::run)
}

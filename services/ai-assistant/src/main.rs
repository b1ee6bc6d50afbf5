fn main() -> std::process::ExitCode {
    kit::main_with(ai_assistant::DEFAULT_PORT, ai_assistant::run)
}

fn main() -> std::process::ExitCode {
    kit::main_with(3000, api_gateway::run)
}

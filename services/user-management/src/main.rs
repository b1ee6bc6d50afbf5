fn main() -> std::process::ExitCode {
    kit::main_with(8002, user_management::run)
}

fn main() -> std::process::ExitCode {
    kit::main_with(8004, security::run)
}

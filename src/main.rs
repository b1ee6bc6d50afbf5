fn main() {
    std::process::exit(stackctl::main_exit_code());
}

fn main() -> std::process::ExitCode {
    phonebak::cli::main_with_args(std::env::args_os().collect())
}

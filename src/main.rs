fn main() -> std::process::ExitCode {
    rallyctl::cli::main()
}

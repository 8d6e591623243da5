//! The `worker` binary, built here for the process-level tests.

fn main() -> std::process::ExitCode {
    worker::cli::main()
}

//! The `worker` binary; everything lives in the library so tests can run the same code.

fn main() -> std::process::ExitCode {
    worker::cli::main()
}

use std::process::ExitCode;

fn main() -> ExitCode {
    ebmlab::cli::main()
}

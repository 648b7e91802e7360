//! The `bcsim` command line: parse, call the library, print. Exit codes follow fsck(8):
//! 0 ok, 8 operational error, 16 usage error.

mod cli;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main())
}

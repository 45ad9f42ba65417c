//! The `s3uring` binary: parsing, dispatch and the exit code live in [`s3uring::cli`].

fn main() -> std::process::ExitCode {
    s3uring::cli::main()
}

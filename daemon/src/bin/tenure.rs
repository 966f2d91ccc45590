//! `tenure`: the command-line tool. Thin glue over [`tenured::cli`].

fn main() -> std::process::ExitCode {
    tenured::cli::main()
}

//! `mlx-serve`: the supervisor daemon and its command line. The crate's map is in `lib.rs`.

fn main() -> std::process::ExitCode {
    mlx_serve::cli::main()
}
